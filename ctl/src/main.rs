//! `ctl`: the operator's CLI. Parses arguments, calls [`apiary_ctl::run()`],
//! and maps its error to an exit code.

use std::process::ExitCode;

use apiary_api::exit;
use apiary_ctl::cli::Args;

fn main() -> ExitCode {
    apiary_proto::malloc::tune_for_streaming();
    let args = match apiary_proto::process::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    // Two workers: `ctl tunnel` moves bulk data both ways at once.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctl: {e}");
            return code(exit::FAILURE);
        }
    };
    match runtime.block_on(apiary_ctl::run(args)) {
        Ok(status) => code(status),
        Err(e) => {
            eprintln!("ctl: {e}");
            code(e.exit_code())
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
