//! `coordinator`: parses arguments, sets up logging, calls the library, and
//! turns the outcome into an exit code.

use std::path::Path;
use std::process::ExitCode;

use apiary_certs::AdminConf;
use apiary_coordinator::cli::coordinator::{Args, Command};
use apiary_coordinator::config::{ClusterConfig, ProviderConfig};
use apiary_coordinator::error::{CoordinatorError, exit};
use apiary_coordinator::pki::ADMIN_CONF;
use apiary_coordinator::serve::{ServeOptions, serve};
use apiary_coordinator::store::{Store, StoreError};
use apiary_ctl::Ctl;

fn main() -> ExitCode {
    apiary_proto::malloc::tune_for_streaming();
    let args = match apiary_coordinator::cli::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    // Above the progress bars while they are drawn, never through them.
    apiary_proto::process::init_tracing(&args.log_format, apiary_coordinator::progress::log_writer);
    let json_logs = args.log_format == "json";
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e, exit::FAILURE, json_logs),
    };
    let command = match args.command {
        Command::Up {
            config,
            state_dir,
            admin_cidrs,
            on_host,
            timeout,
            quiet,
        } => {
            let opts = apiary_coordinator::up::UpOptions {
                config,
                state_dir,
                admin_cidrs,
                on_host,
                timeout,
                progress: apiary_coordinator::progress::Progress::for_serve(quiet, json_logs),
            };
            return match runtime.block_on(apiary_coordinator::up::up(opts)) {
                Ok(report) => {
                    println!(
                        "cluster up: coordinator {} (public {}, VPC {}); ctl --config {} status",
                        report.coordinator.name,
                        report
                            .coordinator
                            .public_ipv4
                            .map_or_else(|| "-".into(), |a| a.to_string()),
                        report
                            .coordinator
                            .private_ipv4
                            .map_or_else(|| "-".into(), |a| a.to_string()),
                        report.admin_conf.display()
                    );
                    let phases: Vec<String> = report
                        .phases
                        .iter()
                        .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
                        .collect();
                    println!("phases: {}", phases.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, e.exit_code(), json_logs),
            };
        }
        Command::Teardown {
            config,
            state_dir,
            keep_coordinator,
        } => {
            let torn = runtime.block_on(async {
                let config =
                    ClusterConfig::load_for_teardown(&config).map_err(CoordinatorError::from)?;
                apiary_coordinator::serve::teardown(&config, &state_dir, keep_coordinator).await
            });
            return match torn {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, e.exit_code(), json_logs),
            };
        }
        other => other,
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve {
                config,
                state_dir,
                listen,
                advertise,
                ssh_keys,
                metrics_listen,
                image_archive,
                quiet,
            } => {
                let mut config = ClusterConfig::load_with(&config, advertise)?;
                if !ssh_keys.is_empty() {
                    match &mut config.provider {
                        ProviderConfig::DigitalOcean(d) => d.spec.ssh_keys.extend(ssh_keys),
                        _ => {
                            return Err(CoordinatorError::ProviderConfig(
                                "--ssh-key is for the digitalocean provider".into(),
                            ));
                        }
                    }
                }
                if let Some(archive) = image_archive {
                    match &mut config.provider {
                        ProviderConfig::Lab(lab) if archive.is_file() => lab.image_archives.push(archive),
                        ProviderConfig::Lab(_) => {
                            return Err(CoordinatorError::ProviderConfig(format!(
                                "--image-archive {}: no such file (make one with `docker save IMAGE -o FILE`)",
                                archive.display()
                            )));
                        }
                        _ => {
                            return Err(CoordinatorError::ProviderConfig(
                                "--image-archive is for the lab provider (real hosts pull their images)".into(),
                            ));
                        }
                    }
                }
                serve(
                    ServeOptions {
                        config,
                        state_dir,
                        listen,
                        metrics_listen,
                        quiet,
                        json_logs,
                    },
                    apiary_proto::process::shutdown_signal(),
                )
                .await
            }
            Command::Token { state_dir, rotate } => token(&state_dir, rotate).await,
            Command::Backup {
                state_dir,
                out,
                passphrase_file,
                json,
            } => {
                use apiary_coordinator::backup;
                let passphrase = backup::passphrase(passphrase_file.as_deref())?;
                let report = backup::backup(&state_dir, &out, passphrase.as_ref()).await?;
                match json {
                    true => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
                    false => println!("{}", backup::backup_text(&report)),
                }
                Ok(())
            }
            Command::Restore {
                file,
                state_dir,
                passphrase_file,
                json,
            } => {
                use apiary_coordinator::backup;
                let passphrase = backup::passphrase(passphrase_file.as_deref())?;
                let report = backup::restore(&file, &state_dir, passphrase.as_ref()).await?;
                match json {
                    true => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
                    false => println!("{}", backup::restore_text(&report)),
                }
                Ok(())
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                apiary_coordinator::docs::write_completions(
                    &mut Args::command(),
                    shell,
                    &mut std::io::stdout(),
                )
                .map_err(CoordinatorError::Completions)
            }
            Command::Man { dir } => {
                use clap::CommandFactory;
                let pages = apiary_coordinator::docs::write_man_pages(&Args::command(), &dir)
                    .map_err(|source| CoordinatorError::ManPages {
                        dir: dir.clone(),
                        source,
                    })?;
                println!("wrote {} man pages to {}", pages.len(), dir.display());
                Ok(())
            }
            Command::Up { .. } | Command::Teardown { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, e.exit_code(), json_logs),
    }
}

async fn token(state_dir: &Path, rotate: bool) -> Result<(), CoordinatorError> {
    let store_path = state_dir.join("state.redb");
    if !store_path.exists() {
        return Err(CoordinatorError::Provider(format!(
            "no coordinator state in {}; start `coordinator serve --state-dir {}` first",
            state_dir.display(),
            state_dir.display()
        )));
    }
    match Store::open(&store_path) {
        // A running coordinator holds the store: ask it over the admin API.
        Err(StoreError::InUse { .. }) => {
            let conf = AdminConf::load(&state_dir.join(ADMIN_CONF))?;
            let mut ctl = Ctl::new(&conf).map_err(|e| CoordinatorError::Provider(e.to_string()))?;
            let (token, _) = ctl
                .join_token(rotate)
                .await
                .map_err(|e| CoordinatorError::Provider(e.to_string()))?;
            println!("{token}");
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(store) => {
            drop(store);
            // Not running: open the state the way `serve` does, without listening.
            let conf = AdminConf::load(&state_dir.join(ADMIN_CONF))?;
            let config = ClusterConfig::parse(
                Path::new("(state)"),
                &format!(
                    "[cluster]\nname = \"{}\"\n[provider]\nkind = \"manual\"\n",
                    conf.cluster
                ),
            )?;
            let coordinator = loop {
                match apiary_coordinator::core::Coordinator::open(config.clone(), state_dir).await {
                    Err(CoordinatorError::Store(StoreError::InUse { .. })) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    other => break other?,
                }
            };
            let record = if rotate {
                coordinator
                    .pki
                    .rotate_token(&coordinator.store, &coordinator.events)
                    .await?
            } else {
                coordinator.pki.current_token()
            };
            println!("{}", record.token);
            Ok(())
        }
    }
}

/// One TLS connection per agent: the default soft limit of 1024 descriptors
/// would cap a cluster at about a thousand hosts, so take the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The error that ended the process: a JSON event when logs are JSON (so
/// stderr stays one object per line), a line for people otherwise.
fn fail(e: &dyn std::fmt::Display, code: i32, json_logs: bool) -> ExitCode {
    if json_logs {
        tracing::error!(error = %e, exit_code = code, "coordinator stopped");
    } else {
        eprintln!("coordinator: {e}");
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
