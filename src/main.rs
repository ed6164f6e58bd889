//! The `llm-registry` command line: `serve` (the default), `migrate`, `rotate-keys`,
//! `rewrap-data-keys`, `import-dhamps-vdb` and `healthcheck`.

use std::process::ExitCode;

use llm_registry::{
    config::{self, Cli, Command},
    dev_postgres, server, telemetry,
};
use tokio::net::TcpListener;

/// mimalloc instead of the system allocator: Embed allocates and frees a vector per input and
/// a JSON reply per call, and glibc's malloc took about a sixth of the server's time in the
/// Embed benchmark (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::from_process();
    if let Err(error) = telemetry::init(cli.global.log_format, &cli.global.log_filter) {
        eprintln!("error: invalid log settings: {error:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once, on standard error: through the log (so LOG_FORMAT=json carries it), or
            // plainly when the log filter hides errors.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{error:#}");
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Migrate) => {
            let own = own_postgres(&cli.global).await?;
            let url = match &own {
                Some(own) => own.url(config::DEV_DATABASE_NAME),
                None => config::database_url(&cli.global)?,
            };
            // The store logs how many it applied.
            server::migrate(cli.global.mode, &url).await?;
            Ok(())
        }
        Some(Command::RotateKeys(args)) => {
            let url = config::database_url(&cli.global)?;
            let source = config::command_key_source(&cli.global, &args.keys, "rotate-keys")?;
            let report =
                server::rotate_keys(cli.global.mode, &url, &source, args.batch_size).await?;
            println!(
                "re-encrypted {} key(s) under primary key {}; {} already current",
                report.reencrypted, report.primary, report.already_current
            );
            if !report.retired.is_empty() {
                println!(
                    "retired data key(s) {} (no stored key uses them)",
                    report.retired.join(", ")
                );
            }
            Ok(())
        }
        Some(Command::RewrapDataKeys(args)) => {
            let url = config::database_url(&cli.global)?;
            let source = config::command_key_source(&cli.global, &args.keys, "rewrap-data-keys")?;
            let report = server::rewrap_data_keys(cli.global.mode, &url, &source).await?;
            println!(
                "rewrapped {} data key(s); {} already current; all now under transit key version {}",
                report.rewrapped,
                report.already_current,
                report
                    .version
                    .map_or_else(|| "(no data keys)".to_owned(), |v| v.to_string())
            );
            Ok(())
        }
        Some(Command::ImportDhampsVdb(args)) => {
            let url = config::database_url(&cli.global)?;
            let source = config::command_key_source(&cli.global, &args.keys, "import-dhamps-vdb")?;
            let environment_key = std::env::var(config::DHAMPS_KEY_VARIABLE)
                .ok()
                .map(zeroize::Zeroizing::new);
            let options = config::import_options(&args, environment_key)?;
            let report =
                server::import_dhamps_vdb(cli.global.mode, &url, &source, &options).await?;
            if let Some(path) = &args.report {
                std::fs::write(path, report.to_json()?).map_err(|e| {
                    anyhow::anyhow!("writing the report to {}: {e}", path.display())
                })?;
            }
            print!("{}", report.to_text());
            Ok(())
        }
        Some(Command::Healthcheck(args)) => {
            llm_registry::healthcheck::check(&args).await?;
            println!("SERVING");
            Ok(())
        }
        Some(Command::Serve(args)) => serve(&cli.global, &args).await,
        None => serve(&cli.global, &cli.serve).await,
    }
}

/// In development mode without DATABASE_URL, when nothing answers on the default address: a
/// PostgreSQL of the command's own (stopped when the returned value is dropped).
async fn own_postgres(
    global: &config::GlobalArgs,
) -> anyhow::Result<Option<dev_postgres::DevPostgres>> {
    if global.mode != config::Mode::Development
        || global.database_url.is_some()
        || dev_postgres::default_answers().await
    {
        return Ok(None);
    }
    let state_dir = global.dev_state_dir();
    let dir = global.dev_postgres_dir.clone();
    // initdb and pg_ctl block for a few seconds, before anything else runs.
    tokio::task::spawn_blocking(move || {
        dev_postgres::DevPostgres::start(dir.as_deref(), &state_dir)
    })
    .await?
}

async fn serve(global: &config::GlobalArgs, args: &config::ServeArgs) -> anyhow::Result<()> {
    let own = own_postgres(global).await?;
    let mut settings = config::serve_settings(global, args)?;
    if let Some(own) = &own {
        settings.database_url = own.url(config::DEV_DATABASE_NAME);
    }
    let listener = TcpListener::bind(settings.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen_addr))?;
    server::serve(settings, listener, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that arrives between the "serving" log line and the first
/// poll of the shutdown future (a pod stopped right after it started) is caught and drains,
/// instead of killing the process with the default disposition.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let wait = |signal: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received"),
            () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
        }
    }
}
