//! The `saescope` command line: argument parsing and display only; every
//! command is a thin call into the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
