//! The `topup-ivr` command line: its commands and what each runs. `main.rs` only sets up the
//! process and runs [`run`] on one runtime.

use std::path::PathBuf;

mod dialplan;
mod prompts;
mod topup;

use dialplan::DialplanCommand;
use prompts::PromptsCommand;

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        command: topup::CardsCommand,
    },
    /// Carriers, prefixes, products, ported numbers and rates.
    Carriers {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::CarriersCommand,
    },
    /// Products for a number.
    Products {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::ProductsCommand,
    },
    /// Number lookup.
    Numbers {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::NumbersCommand,
    },
    /// Wallets and prepaid accounts.
    Accounts {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::AccountsCommand,
    },
    /// Top-ups.
    Topups {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::TopupsCommand,
    },
    /// Calls handed to agents.
    Escalations {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::EscalationsCommand,
    },
    /// The SMS outbox and language files.
    Sms {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::SmsCommand,
    },
    /// API keys of retail terminals and apps (the top-up API under /api/v1).
    Apikeys {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::ApikeysCommand,
    },
    /// Call-centre agents (the console at /console).
    Agents {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::AgentsCommand,
    },
    /// The double-entry ledger.
    Ledger {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: topup::LedgerCommand,
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
pub(crate) enum DbCommand {
    /// Create the database if needed and apply migrations.
    Migrate(ConfigArgs),
}

#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
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
pub(crate) enum CallsCommand {
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
pub(crate) enum DtmfCommand {
    /// Print the DTMF digits in a recording with their start times.
    Detect {
        /// Audio file (WAV, MP3, OGG, FLAC; any rate).
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// The error and its causes on one line, each cause shown once: our error types already
/// write their cause into their own message, and repeating it ("data directory x: Not a
/// directory: data directory x: Not a directory") only hides what went wrong.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
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

/// Opens the top-up core for a command on the data the service keeps. With SQLite the data
/// directory must exist already (`serve` and `db migrate` make it): run from another directory,
/// a command would otherwise make an empty database there and answer "no such account".
pub(crate) async fn open_core(cfg: &Config) -> Result<topup_ivr::topup::Core> {
    if cfg.database_url.is_none() && !cfg.paths.data_dir.is_dir() {
        let dir =
            std::path::absolute(&cfg.paths.data_dir).unwrap_or_else(|_| cfg.paths.data_dir.clone());
        anyhow::bail!(
            "no data directory at {} (run this where `topup-ivr serve` runs, pass --data-dir or set data_dir under [paths]; `topup-ivr db migrate` makes a new one)",
            dir.display()
        );
    }
    Ok(topup_ivr::server::open_core(cfg).await?)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
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

pub(crate) async fn run(cli: Cli) -> Result<()> {
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
                let core = open_core(&cfg).await?;
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
        Command::Dialplan { command } => dialplan::run(command).await?,
        Command::Cards { config, command } => topup::cards(&config.load()?, command).await?,
        Command::Carriers { config, command } => topup::carriers(&config.load()?, command).await?,
        Command::Products { config, command } => topup::products(&config.load()?, command).await?,
        Command::Numbers { config, command } => topup::numbers(&config.load()?, command).await?,
        Command::Accounts { config, command } => {
            topup::accounts_cmd(&config.load()?, command).await?
        }
        Command::Topups { config, command } => topup::topups(&config.load()?, command).await?,
        Command::Escalations { config, command } => {
            topup::escalations(&config.load()?, command).await?
        }
        Command::Agents { config, command } => topup::agents(&config.load()?, command).await?,
        Command::Apikeys { config, command } => topup::apikeys(&config.load()?, command).await?,
        Command::Sms { config, command } => topup::sms(&config.load()?, command).await?,
        Command::Ledger { config, command } => topup::ledger(&config.load()?, command).await?,
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
        Command::Prompts { command } => prompts::run(command)?,
    }
    Ok(())
}
