//! Link order for the release binary: the functions a running sidekey executes (start-up, the
//! request path, reload, admin), listed in `build/hot-symbols.txt` by `benches/hot-symbols.sh`,
//! are placed together at the start of `.text`. The kernel maps file pages 64 KiB around each
//! page a process touches, so code spread over the whole binary made most of it resident;
//! clustered, the resident share follows the code actually run (BENCHMARKS.md, "RSS at
//! start"). Only where rustc links with LLD by default (x86_64 Linux, Rust >= 1.90); names
//! that no longer exist (a dependency or the code changed) are ignored, so a stale list only
//! costs pages, never a build.

fn main() {
    println!("cargo:rerun-if-changed=build/hot-symbols.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = std::path::Path::new(&dir).join("build/hot-symbols.txt");
    if target == "x86_64-unknown-linux-gnu" && release && list.exists() {
        println!(
            "cargo:rustc-link-arg-bin=sidekey=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=sidekey=-Wl,--no-warn-symbol-ordering");
    }
}
