fn main() -> std::process::ExitCode {
    unclip_cli::main_with_args(std::env::args_os())
}
