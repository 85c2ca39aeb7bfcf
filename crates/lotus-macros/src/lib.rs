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
//!
//! The same parser serves two backends: `#[module]` generates a native `lotus_nucleus::Module`,
//! `#[guest_module]` (re-exported by `lotus-module-sdk` as `#[module]`) the guest side of a
//! WebAssembly component, where methods may also be plain `fn`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::{Attribute, FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, Type};

/// Implements `lotus_nucleus::Module` for the type of the annotated `impl` block.
#[proc_macro_attribute]
pub fn module(attr: TokenStream, item: TokenStream) -> TokenStream {
    entry(attr, item, Backend::Native)
}

/// The same authoring style for WebAssembly modules: implements the guest side of the
/// `lotus:module` WIT world through `lotus-module-sdk` (re-exported there as `#[module]`). The
/// type must implement `Default`: each instance starts from `Default::default()`.
#[proc_macro_attribute]
pub fn guest_module(attr: TokenStream, item: TokenStream) -> TokenStream {
    entry(attr, item, Backend::Guest)
}

/// Which side a `#[module]` is generated for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `lotus_nucleus::Module`, run in the nucleus' process.
    Native,
    /// The guest exports of a WebAssembly component, through `lotus_module_sdk`.
    Guest,
}

fn entry(attr: TokenStream, item: TokenStream, backend: Backend) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[module] takes no arguments")
            .to_compile_error()
            .into();
    }
    let input = syn::parse_macro_input!(item as ItemImpl);
    let out = parse(input).and_then(|(input, parsed)| match backend {
        Backend::Native => Ok(native(&input, &parsed)),
        Backend::Guest => guest(&input, &parsed),
    });
    match out {
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
    Ok(out)
}

/// How an event handler takes its event.
enum EvArg {
    Ref,
    Arc,
    Owned,
}

/// A call of one of the module's methods, with whether it must be awaited.
struct Call {
    tokens: Tokens,
    is_async: bool,
}

impl Call {
    fn new(f: &ImplItemFn, tokens: Tokens) -> Self {
        Self {
            tokens,
            is_async: f.sig.asyncness.is_some(),
        }
    }
}

struct ToolDef {
    name: String,
    doc: String,
    args_struct: syn::Ident,
    fields: Vec<Tokens>,
    call: Call,
}

/// What `#[module]` found in an impl block, for either backend.
#[derive(Default)]
struct Parsed {
    /// (method name, pattern, how the event is passed, call with `ev` in scope).
    handlers: Vec<(String, String, EvArg, Call)>,
    tools: Vec<ToolDef>,
    /// (method name, period in ms, call).
    jobs: Vec<(String, u64, Call)>,
    init: Option<Call>,
    shutdown: Option<Call>,
}

fn parse(mut input: ItemImpl) -> syn::Result<(ItemImpl, Parsed)> {
    let mut p = Parsed::default();

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
                let call = Call::new(
                    f,
                    if pass_cx {
                        quote!(self.#ident(cx))
                    } else {
                        quote!(self.#ident())
                    },
                );
                if ident == "initialize" {
                    p.init = Some(call);
                } else {
                    p.shutdown = Some(call);
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
                    Type::Reference(_) => EvArg::Ref,
                    Type::Path(t) if t.path.segments.last().is_some_and(|s| s.ident == "Arc") => {
                        EvArg::Arc
                    }
                    _ => EvArg::Owned,
                };
                let call = Call::new(
                    f,
                    if pass_cx {
                        quote!(self.#ident(cx, __lotus_ev))
                    } else {
                        quote!(self.#ident(__lotus_ev))
                    },
                );
                p.handlers
                    .push((ident.to_string(), pat.value(), ev_arg, call));
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
                let call = Call::new(
                    f,
                    if pass_cx {
                        quote!(self.#ident(cx, #(a.#names),*))
                    } else {
                        quote!(self.#ident(#(a.#names),*))
                    },
                );
                p.tools.push(ToolDef {
                    name,
                    doc: doc_of(&f.attrs),
                    args_struct: st,
                    fields,
                    call,
                });
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
                let call = Call::new(
                    f,
                    if pass_cx {
                        quote!(self.#ident(cx))
                    } else {
                        quote!(self.#ident())
                    },
                );
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                p.jobs.push((ident.to_string(), ms, call));
            }
        }
    }
    Ok((input, p))
}

/// Native methods must be `async fn` (they run on the nucleus' runtime).
fn awaited(call: &Call, what: &str) -> syn::Result<Tokens> {
    let t = &call.tokens;
    if call.is_async {
        Ok(quote!(#t.await))
    } else {
        Err(syn::Error::new_spanned(
            t,
            format!("{what}: native module methods must be `async fn`"),
        ))
    }
}

/// Guest methods may be `async fn` (driven to completion at once: every host call is
/// synchronous) or plain `fn`.
fn driven(call: &Call) -> Tokens {
    let t = &call.tokens;
    if call.is_async {
        quote!(::lotus_module_sdk::__private::block_on(#t))
    } else {
        t.clone()
    }
}

fn native(input: &ItemImpl, p: &Parsed) -> Tokens {
    match native_inner(input, p) {
        Ok(t) => t,
        Err(e) => e.to_compile_error(),
    }
}

fn native_inner(input: &ItemImpl, p: &Parsed) -> syn::Result<Tokens> {
    let self_ty = input.self_ty.clone();
    let np = quote!(::lotus_nucleus);
    let pv = quote!(::lotus_nucleus::__private);
    let handlers = p
        .handlers
        .iter()
        .map(|(name, pat, ev, call)| {
            let ev = match ev {
                EvArg::Ref => quote!(&*ev),
                EvArg::Arc => quote!(ev),
                EvArg::Owned => quote!((*ev).clone()),
            };
            Ok((name, pat, ev, awaited(call, "an #[on_event] handler")?))
        })
        .collect::<syn::Result<Vec<_>>>()?;
    let tools = p
        .tools
        .iter()
        .map(|t| {
            Ok((
                &t.name,
                &t.doc,
                &t.args_struct,
                &t.fields,
                awaited(&t.call, "a #[tool]")?,
            ))
        })
        .collect::<syn::Result<Vec<_>>>()?;
    let jobs = p
        .jobs
        .iter()
        .map(|(name, ms, call)| Ok((name, ms, awaited(call, "a #[periodic] job")?)))
        .collect::<syn::Result<Vec<_>>>()?;
    let init = p
        .init
        .as_ref()
        .map(|c| awaited(c, "`initialize`"))
        .transpose()?;
    let shutdown = p
        .shutdown
        .as_ref()
        .map(|c| awaited(c, "`shutdown`"))
        .transpose()?;

    let (impl_generics, _, where_clause) = input.generics.split_for_impl();

    let handler_decls = handlers
        .iter()
        .map(|(name, pat, _, _)| quote!((#name, #pat)));
    let handler_arms = handlers.iter().enumerate().map(
        |(i, (_, _, ev, call))| quote!(#i => { let __lotus_ev = #ev; #pv::module_result(#call) }),
    );
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
                #pv::tool_result(tool, #call)
            }
        }
    });
    let job_decls = jobs.iter().map(|(name, ms, _)| quote!((#name, #ms)));
    let job_arms = jobs
        .iter()
        .enumerate()
        .map(|(i, (_, _, call))| quote!(#i => #pv::module_result(#call)));
    let init_fn = init.map(|call| {
        quote! {
            fn initialize<'a>(&'a mut self, cx: &'a #np::Context) -> #np::BoxFuture<'a, #np::ModuleResult> {
                let _ = cx;
                ::std::boxed::Box::pin(async move { #pv::module_result(#call) })
            }
        }
    });
    let shutdown_fn = shutdown.map(|call| {
        quote! {
            fn shutdown<'a>(&'a mut self, cx: &'a #np::Context) -> #np::BoxFuture<'a, #np::ModuleResult> {
                let _ = cx;
                ::std::boxed::Box::pin(async move { #pv::module_result(#call) })
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

fn guest(input: &ItemImpl, p: &Parsed) -> syn::Result<Tokens> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "a WebAssembly module type cannot be generic: it is exported as the component itself",
        ));
    }
    let self_ty = &input.self_ty;
    let sdk = quote!(::lotus_module_sdk);
    let gp = quote!(::lotus_module_sdk::__private);
    let index = |i: usize| proc_macro2::Literal::u32_suffixed(u32::try_from(i).unwrap_or(u32::MAX));

    let handler_decls = p
        .handlers
        .iter()
        .map(|(name, pat, _, _)| quote!((#name, #pat)));
    let handler_arms = p.handlers.iter().enumerate().map(|(i, (_, _, ev, call))| {
        let i = index(i);
        let ev = match ev {
            EvArg::Ref => quote!(&ev),
            EvArg::Arc => quote!(::std::sync::Arc::new(ev)),
            EvArg::Owned => quote!(ev),
        };
        let call = driven(call);
        quote!(#i => { let __lotus_ev = #ev; #gp::module_result(#call) })
    });
    let tool_structs = p.tools.iter().map(|t| {
        let (st, fields) = (&t.args_struct, &t.fields);
        quote! {
            #[derive(#gp::serde::Deserialize, #gp::schemars::JsonSchema)]
            #[serde(crate = "::lotus_module_sdk::__private::serde", deny_unknown_fields)]
            #[schemars(crate = "::lotus_module_sdk::__private::schemars")]
            #[allow(non_camel_case_types, dead_code, missing_docs)]
            struct #st { #(#fields),* }
        }
    });
    let tool_decls = p.tools.iter().map(|t| {
        let (name, doc, st) = (&t.name, &t.doc, &t.args_struct);
        quote!(#gp::ToolDecl { name: ::std::string::String::from(#name), description: ::std::string::String::from(#doc), input_schema: #gp::schema_of::<#st>() })
    });
    let tool_arms = p.tools.iter().map(|t| {
        let (name, st) = (&t.name, &t.args_struct);
        let call = driven(&t.call);
        quote! {
            #name => {
                let a: #st = #gp::parse_args(tool, args)?;
                #gp::tool_result(#call)
            }
        }
    });
    let job_decls = p.jobs.iter().map(|(name, ms, _)| quote!((#name, #ms)));
    let job_arms = p.jobs.iter().enumerate().map(|(i, (_, _, call))| {
        let i = index(i);
        let call = driven(call);
        quote!(#i => #gp::module_result(#call))
    });
    let hook = |name: &str, call: &Option<Call>| {
        call.as_ref().map(|c| {
            let ident = format_ident!("{name}");
            let call = driven(c);
            quote! {
                fn #ident(&mut self, cx: &#sdk::Context) -> #gp::ModuleResult {
                    let _ = cx;
                    #gp::module_result(#call)
                }
            }
        })
    };
    let init_fn = hook("initialize", &p.init);
    let shutdown_fn = hook("shutdown", &p.shutdown);

    Ok(quote! {
        #input

        const _: () = {
            #(#tool_structs)*

            impl #gp::Module for #self_ty {
                fn describe() -> #gp::Description {
                    #gp::describe(&[#(#handler_decls),*], ::std::vec![#(#tool_decls),*], &[#(#job_decls),*])
                }

                #init_fn

                fn on_event(&mut self, cx: &#sdk::Context, handler: u32, ev: #sdk::Event) -> #gp::ModuleResult {
                    let _ = (cx, &ev);
                    match handler {
                        #(#handler_arms,)*
                        _ => ::std::result::Result::Ok(()),
                    }
                }

                fn call_tool(&mut self, cx: &#sdk::Context, tool: &str, args: #gp::Value) -> ::std::result::Result<#gp::Value, ::std::string::String> {
                    let _ = (cx, &args);
                    match tool {
                        #(#tool_arms)*
                        _ => ::std::result::Result::Err(::std::format!("no tool `{tool}`")),
                    }
                }

                fn tick(&mut self, cx: &#sdk::Context, job: u32) -> #gp::ModuleResult {
                    let _ = cx;
                    match job {
                        #(#job_arms,)*
                        _ => ::std::result::Result::Ok(()),
                    }
                }

                #shutdown_fn
            }

            type __LotusGuest = #gp::Adapter<#self_ty>;
            #sdk::bindings::__export!(__LotusGuest);
        };
    })
}
