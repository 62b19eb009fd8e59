//! Running a command in a container through the local engine and capturing
//! its output and exit code: what the overlay probes and the database health
//! checks both need.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;

#[derive(Debug)]
pub enum ExecError {
    /// A Docker API call failed at `step` ("create an exec", ...).
    Docker {
        step: &'static str,
        source: bollard::errors::Error,
    },
    /// The command ran longer than allowed.
    Timeout(Duration),
    /// The output ended but the engine never reported an exit code.
    NoExitCode,
}

/// Runs `cmd` in `container` to completion within `limit`: its exit code and
/// its stdout and stderr together.
pub async fn run(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
    limit: Duration,
) -> Result<(i64, String), ExecError> {
    let err = |step| move |source| ExecError::Docker { step, source };
    let options = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd),
        ..Default::default()
    };
    let created = docker
        .create_exec(container, options)
        .await
        .map_err(err("create an exec"))?;
    let output = async {
        let mut text = String::new();
        match docker
            .start_exec(&created.id, None)
            .await
            .map_err(err("start an exec"))?
        {
            StartExecResults::Attached { mut output, .. } => {
                while let Some(chunk) = output.next().await {
                    if let LogOutput::StdOut { message } | LogOutput::StdErr { message } =
                        chunk.map_err(err("read an exec's output"))?
                    {
                        text.push_str(&String::from_utf8_lossy(&message));
                    }
                }
            }
            StartExecResults::Detached => {}
        }
        Ok(text)
    };
    let text = tokio::time::timeout(limit, output)
        .await
        .map_err(|_| ExecError::Timeout(limit))??;
    // The stream ends when the process does; its exit code may lag a moment.
    for _ in 0..50 {
        let i = docker
            .inspect_exec(&created.id)
            .await
            .map_err(err("inspect an exec"))?;
        if i.running != Some(true) {
            return Ok((i.exit_code.unwrap_or(-1), text));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(ExecError::NoExitCode)
}
