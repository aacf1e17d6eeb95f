//! `ferry`: parses flags, loads config, runs a command. Logic lives in the library and `cli`.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
