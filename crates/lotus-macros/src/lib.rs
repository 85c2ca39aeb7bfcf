//! # lotus-macros
//!
//! The authoring macros of LOTUS modules. Put `#[lotus::module]` on an `impl` block and mark
//! methods inside it:
//!
//! - `#[on_event("topic.pattern")]` — `async fn(&mut self, cx: &Context, ev: &Event) -> Result<()>`
//!   (the event may also be taken as `Arc<Event>` or `Event`);
//! - `#[tool("name")]` — `async fn(&mut self, cx: &Context, a: A, b: B…) -> Result<T>`: the
//!   arguments become a JSON object whose schema is derived from their Rust types, the doc comment
//!   becomes the tool's description, `T` is serialized as the result;
//! - `#[periodic(every = "5s")]` — `async fn(&mut self, cx: &Context) -> Result<()>`.
//!
//! Methods named `initialize` and `shutdown` become the module's lifecycle hooks. The `cx`
//! parameter may be left out of any of these. Patterns and periods are checked at compile time.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, Type};

/// Implements `lotus_nucleus::Module` for the type of the annotated `impl` block.
#[proc_macro_attribute]
pub fn module(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[module] takes no arguments")
            .to_compile_error()
            .into();
    }
    let input = syn::parse_macro_input!(item as ItemImpl);
    match expand(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn outside(name: &str) -> TokenStream {
    syn::Error::new(
        Span::call_site(),
        format!("#[{name}] only works on a method inside a `#[lotus::module] impl` block"),
    )
    .to_compile_error()
    .into()
}

/// Marks an event handler inside a `#[module]` impl block.
#[proc_macro_attribute]
pub fn on_event(_: TokenStream, _: TokenStream) -> TokenStream {
    outside("on_event")
}

/// Marks a tool inside a `#[module]` impl block.
#[proc_macro_attribute]
pub fn tool(_: TokenStream, _: TokenStream) -> TokenStream {
    outside("tool")
}

/// Marks a periodic job inside a `#[module]` impl block.
#[proc_macro_attribute]
pub fn periodic(_: TokenStream, _: TokenStream) -> TokenStream {
    outside("periodic")
}

enum Kind {
    Handler(LitStr),
    Tool(Option<LitStr>),
    Periodic(LitStr),
}

fn attr_name(a: &Attribute) -> Option<String> {
    a.path().segments.last().map(|s| s.ident.to_string())
}

fn take_kind(f: &mut ImplItemFn) -> syn::Result<Option<Kind>> {
    let mut found = None;
    let mut keep = Vec::new();
    for a in f.attrs.drain(..) {
        let kind = match attr_name(&a).as_deref() {
            Some("on_event") => Some(Kind::Handler(a.parse_args::<LitStr>()?)),
            Some("tool") => Some(Kind::Tool(match &a.meta {
                syn::Meta::Path(_) => None,
                _ => Some(a.parse_args::<LitStr>()?),
            })),
            Some("periodic") => {
                let mut every = None;
                a.parse_nested_meta(|m| {
                    if m.path.is_ident("every") {
                        every = Some(m.value()?.parse::<LitStr>()?);
                        Ok(())
                    } else {
                        Err(m.error("expected `every = \"…\"`, e.g. #[periodic(every = \"5s\")]"))
                    }
                })?;
                let every = every.ok_or_else(|| {
                    syn::Error::new_spanned(&a, "expected #[periodic(every = \"5s\")]")
                })?;
                Some(Kind::Periodic(every))
            }
            _ => {
                keep.push(a);
                None
            }
        };
        if let Some(k) = kind {
            if found.is_some() {
                return Err(syn::Error::new(
                    f.sig.ident.span(),
                    "a method can carry only one of #[on_event], #[tool], #[periodic]",
                ));
            }
            found = Some(k);
        }
    }
    f.attrs = keep;
    Ok(found)
}

fn check_pattern(lit: &LitStr) -> syn::Result<()> {
    let s = lit.value();
    let toks: Vec<&str> = s.split('.').collect();
    let ok = !s.is_empty()
        && s.len() <= 256
        && toks.iter().enumerate().all(|(i, t)| {
            *t == "*"
                || (*t == ">" && i + 1 == toks.len())
                || (!t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "`{s}` is not a topic pattern: dot-separated tokens of [A-Za-z0-9_-], `*` for one token, `>` last for the rest"
            ),
        ))
    }
}

fn doc_of(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value().trim().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_owned()
}

/// Whether a parameter type is `&Context` (or `&…::Context`).
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => match &*r.elem {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Context"),
            _ => false,
        },
        _ => false,
    }
}

/// Typed parameters after `self`: `(name, type)`.
fn params(f: &ImplItemFn) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut out = Vec::new();
    let mut has_self = false;
    for arg in &f.sig.inputs {
        match arg {
            FnArg::Receiver(_) => has_self = true,
            FnArg::Typed(t) => {
                let name = match &*t.pat {
                    Pat::Ident(i) => i.ident.clone(),
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "use a plain name for this parameter",
                        ));
                    }
                };
                out.push((name, (*t.ty).clone()));
            }
        }
    }
    if !has_self {
        return Err(syn::Error::new(
            f.sig.ident.span(),
            "module methods take `&mut self` or `&self`",
        ));
    }
    if f.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            f.sig.fn_token.span(),
            "module methods must be `async fn`",
        ));
    }
    Ok(out)
}

fn expand(mut input: ItemImpl) -> syn::Result<Tokens> {
    let self_ty = input.self_ty.clone();
    let np = quote!(::lotus_nucleus);
    let pv = quote!(::lotus_nucleus::__private);

    let mut handlers = Vec::new(); // (pattern, call)
    let mut tools = Vec::new(); // (name, doc, args struct ident, fields, call)
    let mut jobs = Vec::new(); // (name, millis, call)
    let mut init = None;
    let mut shutdown = None;

    for item in &mut input.items {
        let ImplItem::Fn(f) = item else { continue };
        let kind = take_kind(f)?;
        let ident = f.sig.ident.clone();
        match kind {
            None if ident == "initialize" || ident == "shutdown" => {
                let ps = params(f)?;
                let pass_cx = ps.first().is_some_and(|(_, t)| is_context(t));
                if ps.len() > usize::from(pass_cx) {
                    return Err(syn::Error::new(
                        ident.span(),
                        format!("`{ident}` takes only `cx: &Context`"),
                    ));
                }
                let call = if pass_cx {
                    quote!(self.#ident(cx))
                } else {
                    quote!(self.#ident())
                };
                if ident == "initialize" {
                    init = Some(call);
                } else {
                    shutdown = Some(call);
                }
            }
            None => {}
            Some(Kind::Handler(pat)) => {
                check_pattern(&pat)?;
                let ps = params(f)?;
                let pass_cx = ps.first().is_some_and(|(_, t)| is_context(t));
                let rest = &ps[usize::from(pass_cx)..];
                let [(_, ev_ty)] = rest else {
                    return Err(syn::Error::new(
                        ident.span(),
                        "an #[on_event] handler takes `cx: &Context` (optional) and the event (`&Event`, `Arc<Event>` or `Event`)",
                    ));
                };
                let ev_arg = match ev_ty {
                    Type::Reference(_) => quote!(&*ev),
                    Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Arc") => {
                        quote!(ev)
                    }
                    _ => quote!((*ev).clone()),
                };
                let call = if pass_cx {
                    quote!(self.#ident(cx, #ev_arg))
                } else {
                    quote!(self.#ident(#ev_arg))
                };
                handlers.push((ident.to_string(), pat.value(), call));
            }
            Some(Kind::Tool(name)) => {
                let ps = params(f)?;
                let pass_cx = ps.first().is_some_and(|(_, t)| is_context(t));
                let args = &ps[usize::from(pass_cx)..];
                for (n, t) in args {
                    if matches!(t, Type::Reference(_)) {
                        return Err(syn::Error::new_spanned(
                            t,
                            format!(
                                "tool argument `{n}` must be an owned type (e.g. `String`, not `&str`)"
                            ),
                        ));
                    }
                }
                let name = name.map(|l| l.value()).unwrap_or_else(|| ident.to_string());
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(syn::Error::new(
                        ident.span(),
                        format!("tool name `{name}` must be one token of [A-Za-z0-9_-]"),
                    ));
                }
                let st = format_ident!("__LotusArgs_{}", ident);
                let fields: Vec<_> = args.iter().map(|(n, t)| quote!(#n: #t)).collect();
                let names: Vec<_> = args.iter().map(|(n, _)| n.clone()).collect();
                let call = if pass_cx {
                    quote!(self.#ident(cx, #(a.#names),*))
                } else {
                    quote!(self.#ident(#(a.#names),*))
                };
                tools.push((name, doc_of(&f.attrs), st, fields, call));
            }
            Some(Kind::Periodic(every)) => {
                let d = humantime::parse_duration(&every.value()).map_err(|e| {
                    syn::Error::new(
                        every.span(),
                        format!(
                            "`{}` is not a duration ({e}); e.g. \"500ms\", \"5s\", \"1m\"",
                            every.value()
                        ),
                    )
                })?;
                if d.is_zero() {
                    return Err(syn::Error::new(
                        every.span(),
                        "a periodic job needs a period longer than zero",
                    ));
                }
                let ps = params(f)?;
                let pass_cx = ps.first().is_some_and(|(_, t)| is_context(t));
                if ps.len() > usize::from(pass_cx) {
                    return Err(syn::Error::new(
                        ident.span(),
                        "a #[periodic] job takes only `cx: &Context`",
                    ));
                }
                let call = if pass_cx {
                    quote!(self.#ident(cx))
                } else {
                    quote!(self.#ident())
                };
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                jobs.push((ident.to_string(), ms, call));
            }
        }
    }

    let (impl_generics, _, where_clause) = input.generics.split_for_impl();

    let handler_decls = handlers.iter().map(|(name, pat, _)| quote!((#name, #pat)));
    let handler_arms = handlers
        .iter()
        .enumerate()
        .map(|(i, (_, _, call))| quote!(#i => #pv::module_result(#call.await)));
    let tool_structs = tools.iter().map(|(_, _, st, fields, _)| {
        quote! {
            #[derive(#pv::serde::Deserialize, #pv::schemars::JsonSchema)]
            #[serde(crate = "::lotus_nucleus::__private::serde", deny_unknown_fields)]
            #[schemars(crate = "::lotus_nucleus::__private::schemars")]
            #[allow(non_camel_case_types, dead_code, missing_docs)]
            struct #st { #(#fields),* }
        }
    });
    let tool_decls = tools.iter().map(|(name, doc, st, _, _)| {
        quote!(#np::ToolDecl { name: ::std::string::String::from(#name), description: ::std::string::String::from(#doc), input_schema: #pv::schema_of::<#st>() })
    });
    let tool_arms = tools.iter().map(|(name, _, st, _, call)| {
        quote! {
            #name => {
                let a: #st = #pv::parse_args(tool, args)?;
                #pv::tool_result(tool, #call.await)
            }
        }
    });
    let job_decls = jobs.iter().map(|(name, ms, _)| quote!((#name, #ms)));
    let job_arms = jobs
        .iter()
        .enumerate()
        .map(|(i, (_, _, call))| quote!(#i => #pv::module_result(#call.await)));
    let init_fn = init.map(|call| {
        quote! {
            fn initialize<'a>(&'a mut self, cx: &'a #np::Context) -> #np::BoxFuture<'a, #np::ModuleResult> {
                let _ = cx;
                ::std::boxed::Box::pin(async move { #pv::module_result(#call.await) })
            }
        }
    });
    let shutdown_fn = shutdown.map(|call| {
        quote! {
            fn shutdown<'a>(&'a mut self, cx: &'a #np::Context) -> #np::BoxFuture<'a, #np::ModuleResult> {
                let _ = cx;
                ::std::boxed::Box::pin(async move { #pv::module_result(#call.await) })
            }
        }
    });

    Ok(quote! {
        #input

        const _: () = {
            #(#tool_structs)*

            impl #impl_generics #np::Module for #self_ty #where_clause {
                fn describe(&self) -> #np::ModuleDescription {
                    #pv::describe(&[#(#handler_decls),*], ::std::vec![#(#tool_decls),*], &[#(#job_decls),*])
                }

                #init_fn

                fn on_event<'a>(&'a mut self, cx: &'a #np::Context, handler: usize, ev: ::std::sync::Arc<#np::Event>) -> #np::BoxFuture<'a, #np::ModuleResult> {
                    let _ = (cx, &ev);
                    ::std::boxed::Box::pin(async move {
                        match handler {
                            #(#handler_arms,)*
                            _ => ::std::result::Result::Ok(()),
                        }
                    })
                }

                fn call_tool<'a>(&'a mut self, cx: &'a #np::Context, tool: &'a str, args: #pv::Value) -> #np::BoxFuture<'a, ::std::result::Result<#pv::Value, #np::ToolError>> {
                    let _ = (cx, &args);
                    ::std::boxed::Box::pin(async move {
                        match tool {
                            #(#tool_arms)*
                            _ => ::std::result::Result::Err(#np::ToolError::NotFound { tool: ::std::string::String::from(tool) }),
                        }
                    })
                }

                fn tick<'a>(&'a mut self, cx: &'a #np::Context, job: usize) -> #np::BoxFuture<'a, #np::ModuleResult> {
                    let _ = cx;
                    ::std::boxed::Box::pin(async move {
                        match job {
                            #(#job_arms,)*
                            _ => ::std::result::Result::Ok(()),
                        }
                    })
                }

                #shutdown_fn
            }
        };
    })
}
