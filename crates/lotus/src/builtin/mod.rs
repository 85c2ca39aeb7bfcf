//! The modules compiled into the `lotus` binary.

mod echo;
mod heartbeat;

pub use echo::Echo;
pub use heartbeat::Heartbeat;

use lotus_nucleus::{NativeHost, NativeModule};

/// Every built-in module, with its embedded manifest.
pub fn all() -> Vec<NativeModule> {
    vec![
        NativeModule {
            manifest: include_str!("heartbeat.yaml"),
            factory: || Box::new(Heartbeat::default()),
        },
        NativeModule {
            manifest: include_str!("echo.yaml"),
            factory: || Box::new(Echo),
        },
        memory(),
        reasoning(),
    ]
}

/// The reasoning module.
pub fn reasoning() -> NativeModule {
    lotus_reasoning::native()
}

/// The memory module.
pub fn memory() -> NativeModule {
    NativeModule {
        manifest: include_str!("memory.yaml"),
        factory: || Box::<lotus_memory::MemoryModule>::default(),
    }
}

/// The manifests of the built-in modules.
pub fn manifests() -> Vec<lotus_core::Manifest> {
    all()
        .iter()
        .filter_map(|b| {
            lotus_core::Manifest::parse(b.manifest, std::path::Path::new("<builtin>")).ok()
        })
        .collect()
}

/// The native host with every built-in module.
pub fn native_host() -> Result<NativeHost, lotus_core::ManifestError> {
    all()
        .into_iter()
        .try_fold(NativeHost::new(), NativeHost::with)
}
