//! Link order for the release binary: the functions a running sidekey executes (start-up, the
//! request path, reload, admin), listed in `build/hot-symbols.txt` by `benches/hot-symbols.sh`,
//! are placed together at the start of `.text`. The kernel maps file pages 64 KiB around each
//! page a process touches, so code spread over the whole binary made most of it resident;
//! clustered, the resident share follows the code actually run (BENCHMARKS.md, "RSS at
//! start"). Names that no longer exist (a dependency or the code changed) are ignored, so a
//! stale list only costs pages, never a build.
//!
//! Only where rustc links with LLD by default (x86_64-unknown-linux-gnu, Rust >= 1.90), and
//! not when the build names its own linker (`SIDEKEY_NO_LINK_ORDER=1` turns it off too):
//! GNU ld does not know the option.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build/hot-symbols.txt");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SIDEKEY_NO_LINK_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let own_linker = var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        || var("CARGO_ENCODED_RUSTFLAGS").contains("fuse-ld")
        || !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        || !var("SIDEKEY_NO_LINK_ORDER").is_empty();
    let list = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("build/hot-symbols.txt");
    if var("TARGET") == "x86_64-unknown-linux-gnu"
        && release
        && !own_linker
        && lld_by_default()
        && list.exists()
    {
        println!(
            "cargo:rustc-link-arg-bin=sidekey=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=sidekey=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc 1.90 made rust-lld the default linker on x86_64-unknown-linux-gnu.
fn lld_by_default() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    matches!((parts.next(), parts.next()), (Some(1), Some(minor)) if minor >= 90)
}
