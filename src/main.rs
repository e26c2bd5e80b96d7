//! The `topup-ivr` command line.

use std::path::PathBuf;
use std::process::ExitCode;

mod topup_cli;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use topup_ivr::config::{Config, LogFormat, Overrides};
use topup_ivr::media::dtmf::inband::InbandDetector;
use topup_ivr::media::prompts::{decode_file, resample};

#[derive(Parser)]
#[command(
    name = "topup-ivr",
    version,
    about = "IVR media service for prepaid mobile top-up"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: built-in SIP, prompts, dialplans, embedded SQLite.
    Serve(ConfigArgs),
    /// Call detail records.
    Calls {
        #[command(subcommand)]
        command: CallsCommand,
    },
    /// DTMF tools.
    Dtmf {
        #[command(subcommand)]
        command: DtmfCommand,
    },
    /// Dialplan tools.
    Dialplan {
        #[command(subcommand)]
        command: DialplanCommand,
    },
    /// Prompt tools.
    Prompts {
        #[command(subcommand)]
        command: PromptsCommand,
    },
    /// PIN cards (vouchers).
    Cards {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::CardsCommand,
    },
    /// Carriers, prefixes, products, ported numbers and rates.
    Carriers {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::CarriersCommand,
    },
    /// Products for a number.
    Products {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::ProductsCommand,
    },
    /// Number lookup.
    Numbers {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::NumbersCommand,
    },
    /// Wallets and prepaid accounts.
    Accounts {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::AccountsCommand,
    },
    /// Top-ups.
    Topups {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::TopupsCommand,
    },
    /// Calls handed to agents.
    Escalations {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::EscalationsCommand,
    },
    /// The SMS outbox and language files.
    Sms {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::SmsCommand,
    },
    /// API keys of retail terminals and apps (the top-up API under /api/v1).
    Apikeys {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::ApikeysCommand,
    },
    /// Call-centre agents (the console at /console).
    Agents {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::AgentsCommand,
    },
    /// The double-entry ledger.
    Ledger {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup_cli::LedgerCommand,
    },
    /// Places many concurrent test calls (SIP + RTP + RFC 4733) against a running service
    /// and prints call set-up, jitter, loss, key-to-prompt latency and the service's CPU and
    /// memory. Exits 1 if any call was refused or failed.
    Loadgen(topup_loadgen::LoadgenArgs),
    /// Database tools.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create the database if needed and apply migrations.
    Migrate(ConfigArgs),
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Configuration file (TOML). Every key is optional.
    #[arg(global = true, long, short = 'c', env = "TOPUP_IVR_CONFIG")]
    config: Option<PathBuf>,
    /// SIP listen address.
    #[arg(
        global = true,
        long,
        env = "TOPUP_IVR_SIP_LISTEN",
        value_name = "ADDR:PORT"
    )]
    sip_listen: Option<String>,
    /// RTP port range, e.g. 20000-29999.
    #[arg(
        global = true,
        long,
        env = "TOPUP_IVR_RTP_PORTS",
        value_name = "LOW-HIGH"
    )]
    rtp_ports: Option<String>,
    /// HTTP listen address (health, API).
    #[arg(
        global = true,
        long,
        env = "TOPUP_IVR_HTTP_LISTEN",
        value_name = "ADDR:PORT"
    )]
    http_listen: Option<String>,
    /// Data directory (database).
    #[arg(global = true, long, env = "TOPUP_IVR_DATA_DIR", value_name = "DIR")]
    data_dir: Option<String>,
    /// Prompts directory (one subdirectory per language).
    #[arg(global = true, long, env = "TOPUP_IVR_PROMPTS_DIR", value_name = "DIR")]
    prompts_dir: Option<String>,
    /// Dialplans directory.
    #[arg(
        global = true,
        long,
        env = "TOPUP_IVR_DIALPLANS_DIR",
        value_name = "DIR"
    )]
    dialplans_dir: Option<String>,
    /// SMS texts directory (one file per language).
    #[arg(global = true, long, env = "TOPUP_IVR_SMS_DIR", value_name = "DIR")]
    sms_dir: Option<String>,
    /// Database: postgres://USER:PASSWORD@HOST/DB (default: SQLite in the data directory).
    #[arg(
        global = true,
        long,
        env = "TOPUP_IVR_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        let o = Overrides {
            sip_listen: self.sip_listen.clone(),
            rtp_ports: self.rtp_ports.clone(),
            http_listen: self.http_listen.clone(),
            data_dir: self.data_dir.clone(),
            prompts_dir: self.prompts_dir.clone(),
            dialplans_dir: self.dialplans_dir.clone(),
            sms_dir: self.sms_dir.clone(),
            database_url: self.database_url.clone(),
        };
        Ok(Config::load(self.config.as_deref(), &o)?)
    }
}

#[derive(Subcommand)]
enum CallsCommand {
    /// List recent calls, newest first.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum DtmfCommand {
    /// Print the DTMF digits in a recording with their start times.
    Detect {
        /// Audio file (WAV, MP3, OGG, FLAC; any rate).
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DialplanCommand {
    /// Check dialplans (all in the dialplans directory, or the files given): references,
    /// prompts in every language, timeouts and invalid handling, reachability, loops.
    Check {
        files: Vec<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Draw a dialplan as SVG (self-contained) or Graphviz DOT, on standard output.
    Graph {
        file: PathBuf,
        #[arg(long, default_value = "svg", value_parser = ["svg", "dot"])]
        format: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run a call through a dialplan in the terminal, against the real core with the demo
    /// data in a scratch database.
    Simulate {
        file: PathBuf,
        /// The caller's number (caller ID).
        #[arg(long, default_value = "+12015550100")]
        caller: String,
        /// Keys the caller presses, one each time the plan waits for a key; `,` lets a
        /// timeout pass.
        #[arg(long, default_value = "")]
        digits: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum PromptsCommand {
    /// Load every prompt as `serve` would.
    Check(ConfigArgs),
}

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

/// The error and its causes on one line, each cause shown once: our error types already
/// write their cause into their own message, and repeating it ("data directory x: Not a
/// directory: data directory x: Not a directory") only hides what went wrong.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOPUP_IVR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dialplan(command: DialplanCommand) -> Result<()> {
    use std::sync::Arc;
    use topup_ivr::dialplan::{Catalog, Dialplan, Dialplans, graph};
    use topup_ivr::media::prompts::PromptStore;
    use topup_ivr::sms::messages::NAMES;
    let load_prompts = |cfg: &Config| -> Result<PromptStore> {
        Ok(PromptStore::load(&cfg.paths.prompts, Default::default())?)
    };
    let load_plan = |file: &PathBuf, prompts: &PromptStore| -> Result<Dialplan> {
        let has = |l: &str, n: &str| prompts.get(l, n).is_some();
        Dialplan::load(file, &Catalog::new(&has, &NAMES)).map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    };
    match command {
        DialplanCommand::Check { files, config } => {
            let cfg = config.load()?;
            let prompts = load_prompts(&cfg)?;
            let has = |l: &str, n: &str| prompts.get(l, n).is_some();
            let plans = if files.is_empty() {
                Dialplans::load_dir(&cfg.paths.dialplans, &Catalog::new(&has, &NAMES))
            } else {
                Dialplans::load_files(&files, &Catalog::new(&has, &NAMES))
            };
            let plans = plans.map_err(|errs| {
                anyhow::anyhow!(
                    "{}",
                    errs.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            for p in plans.plans() {
                println!(
                    "ok {} ({}): numbers {}, {} nodes, languages {}",
                    p.source.display(),
                    p.service,
                    p.numbers.join(", "),
                    p.nodes.len(),
                    p.languages.join(", ")
                );
            }
        }
        DialplanCommand::Graph {
            file,
            format,
            config,
        } => {
            let cfg = config.load()?;
            let prompts = load_prompts(&cfg)?;
            let plan = load_plan(&file, &prompts)?;
            print!(
                "{}",
                if format == "dot" {
                    graph::to_dot(&plan)
                } else {
                    graph::to_svg(&plan)
                }
            );
        }
        DialplanCommand::Simulate {
            file,
            caller,
            digits,
            config,
        } => {
            let cfg = config.load()?;
            let prompts = load_prompts(&cfg)?;
            let plan = Arc::new(load_plan(&file, &prompts)?);
            async {
                let scratch = tempfile::tempdir()?;
                let core = topup_ivr::topup::Core::new(
                    topup_ivr::store::Db::open(scratch.path()).await?,
                    topup_ivr::topup::secrets::Pepper::new(
                        hex::encode(rand::random::<[u8; 16]>()).as_bytes(),
                    )?,
                    cfg.security.auth,
                )
                .with_call_limits(cfg.calling.limits.clone());
                core.seed_demo(topup_ivr::topup::books::now_ms()).await?;
                let adapters = topup_ivr::topup::adapters::Adapters::new();
                let sim = topup_ivr::call::simulate::Simulation {
                    plan,
                    prompts: &prompts,
                    core: &core,
                    adapters: &adapters,
                    hlr: None,
                    caller,
                };
                for line in sim.run(&digits).await {
                    println!("{line}");
                }
                core.db.close().await;
                anyhow::Ok(())
            }
            .await?;
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Loadgen(args) => {
            let json = args.json;
            let report = topup_loadgen::run(args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if report.errors() > 0 {
                anyhow::bail!(
                    "{} of {} calls were refused or failed",
                    report.errors(),
                    report.calls
                );
            }
        }
        Command::Serve(args) => {
            let mut cfg = args.load()?;
            init_logging(&cfg);
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            for w in topup_ivr::server::fit_descriptors(&mut cfg) {
                tracing::warn!("{w}");
            }
            topup_ivr::server::serve(cfg, topup_ivr::server::termination_signal()).await?;
        }
        Command::Calls {
            command:
                CallsCommand::List {
                    config,
                    json,
                    limit,
                },
        } => {
            let cfg = config.load()?;
            let cdrs = async {
                let core = topup_ivr::server::open_core(&cfg).await?;
                let rows = core.db.recent_cdrs(limit).await;
                core.db.close().await;
                anyhow::Ok(rows?)
            }
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cdrs)?);
            } else {
                let row = |cols: [&str; 8]| {
                    println!(
                        "{:<24} {:<14} {:<10} {:<8} {:<5} {:<14} {:<16} {}",
                        cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
                    )
                };
                row([
                    "STARTED", "CALLER", "DIALLED", "SERVICE", "CODEC", "DTMF", "END", "DIGITS",
                ]);
                for c in cdrs {
                    row([
                        &c.started_at,
                        &c.caller,
                        &c.dialled,
                        c.service.as_deref().unwrap_or(""),
                        c.codec.as_deref().unwrap_or(""),
                        &c.dtmf_methods,
                        &c.end_reason,
                        c.digits.as_deref().unwrap_or(""),
                    ]);
                }
            }
        }
        Command::Dtmf {
            command: DtmfCommand::Detect { file, json },
        } => {
            let (samples, rate) = decode_file(&file)?;
            let pcm: Vec<i16> = resample(&samples, rate, 8000)
                .map_err(anyhow::Error::msg)?
                .iter()
                .map(|s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
                .collect();
            let found = InbandDetector::detect_all(&pcm);
            if json {
                let v: Vec<_> = found
                    .iter()
                    .map(|d| serde_json::json!({"digit": d.digit.to_string(), "start": d.start_sample as f64 / 8000.0}))
                    .collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                for d in found {
                    println!("{:.3} {}", d.start_sample as f64 / 8000.0, d.digit);
                }
            }
        }
        Command::Dialplan { command } => dialplan(command).await?,
        Command::Cards { config, command } => topup_cli::cards(&config.load()?, command).await?,
        Command::Carriers { config, command } => {
            topup_cli::carriers(&config.load()?, command).await?
        }
        Command::Products { config, command } => {
            topup_cli::products(&config.load()?, command).await?
        }
        Command::Numbers { config, command } => {
            topup_cli::numbers(&config.load()?, command).await?
        }
        Command::Accounts { config, command } => {
            topup_cli::accounts_cmd(&config.load()?, command).await?
        }
        Command::Topups { config, command } => topup_cli::topups(&config.load()?, command).await?,
        Command::Escalations { config, command } => {
            topup_cli::escalations(&config.load()?, command).await?
        }
        Command::Agents { config, command } => topup_cli::agents(&config.load()?, command).await?,
        Command::Apikeys { config, command } => {
            topup_cli::apikeys(&config.load()?, command).await?
        }
        Command::Sms { config, command } => topup_cli::sms(&config.load()?, command).await?,
        Command::Ledger { config, command } => topup_cli::ledger(&config.load()?, command).await?,
        Command::Db {
            command: DbCommand::Migrate(args),
        } => {
            let cfg = args.load()?;
            async {
                let core = topup_ivr::server::open_core(&cfg).await?;
                core.db.close().await;
                anyhow::Ok(())
            }
            .await?;
            println!("database ready");
        }
        Command::Prompts {
            command: PromptsCommand::Check(args),
        } => {
            let cfg = args.load()?;
            let store = topup_ivr::media::prompts::PromptStore::load(
                &cfg.paths.prompts,
                Default::default(),
            )?;
            let mut langs: Vec<&str> = store.languages().collect();
            langs.sort();
            println!("ok: {} prompts in {}", store.len(), langs.join(", "));
        }
    }
    Ok(())
}
