//! `shg`, the one binary of SHG: argument parsing and wiring; the work is done by the libraries.

mod cli;
mod commands;
mod daemon;
mod demo;
mod fleet;
mod lab;
mod output;

use std::io;

use clap::Parser;

fn main() {
    let code = match run() {
        Ok(code) => code,
        // Whoever read our output stopped reading (`shg logs -f web | head`): not an error.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            1
        }
    };
    std::process::exit(code)
}

fn run() -> anyhow::Result<i32> {
    commands::run(cli::Cli::parse())
}

/// The error and its causes on one line, like `{:#}`, skipping a cause whose text its parent
/// already shows (some library errors print their source as part of their own message).
fn report(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io = match cause.downcast_ref::<api::ClientError>() {
            Some(api::ClientError::Output { error }) => Some(error),
            _ => cause.downcast_ref::<io::Error>(),
        };
        io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
