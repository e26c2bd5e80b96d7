//! The `topup-ivr` binary: sets the process up (signals, file mode, core dumps) and runs the
//! command line ([`cli`]) on one runtime.

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::{Cli, Command, error_chain, run, runtime};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output piped into `head` ends quietly when the reader goes, as Unix
        // tools do, instead of panicking on a broken pipe. (The service keeps ignoring SIGPIPE:
        // a peer that goes away must never stop it.)
        // SAFETY: called before any thread is started; SIG_DFL is always a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if matches!(cli.command, Command::Serve(_)) {
        // Everything the service writes (the database and its journal, the pepper file) is
        // the service user's alone.
        // SAFETY: umask only sets this process's file creation mask.
        unsafe {
            libc::umask(0o077);
        }
        // The service holds PINs in memory while it checks them: a crash must not write them
        // to a core file. Only the soft limit is lowered: someone who needs a core can raise
        // it again knowingly (`prlimit --core=unlimited --pid ...`).
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read or fill the struct we pass and change only this
        // process's limit.
        let ok = unsafe {
            libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0 && {
                limit.rlim_cur = 0;
                libc::setrlimit(libc::RLIMIT_CORE, &limit) == 0
            }
        };
        if !ok {
            eprintln!("warning: could not turn core dumps off");
        }
    }
    // One runtime for every command: the service, the load generator and the commands that
    // open the database.
    match runtime().and_then(|rt| rt.block_on(run(cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
