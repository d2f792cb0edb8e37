//! The `unclip` binary, built inside the tests package so its tests can run it
//! (`CARGO_BIN_EXE_unclip-e2e`).
fn main() -> std::process::ExitCode {
    unclip_cli::main_with_args(std::env::args_os())
}
