//! Link-time settings of the `orchestrator` binary.

fn main() {
    // Relative relocations packed (RELR, glibc >= 2.36): the dynamic loader otherwise reads
    // ~1 MB of `.rela.dyn` at every start, pages that stay resident for the life of an idle
    // server (bench/README.md, "idle server RSS").
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
