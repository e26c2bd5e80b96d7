//! `topup-ivr dialplan`: check, draw and simulate the plans.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use topup_ivr::config::Config;

use super::ConfigArgs;

#[derive(Subcommand)]
pub enum DialplanCommand {
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

pub async fn run(command: DialplanCommand) -> Result<()> {
    use std::sync::Arc;
    use topup_ivr::dialplan::{Catalog, Dialplan, Dialplans, graph};
    use topup_ivr::media::prompts::PromptStore;
    use topup_ivr::sms::messages::NAMES;
    let load_prompts = |cfg: &Config| -> Result<PromptStore> {
        Ok(PromptStore::load(&cfg.paths.prompts, Default::default())?)
    };
    let load_plan = |file: &PathBuf, prompts: &PromptStore| -> Result<Dialplan> {
        let has = |l: &str, n: &str| prompts.get(l, n).is_some();
        let names = |l: &str| prompts.names(l).into_iter().map(String::from).collect();
        Dialplan::load(file, &Catalog::new(&has, &NAMES).with_prompt_names(&names))
            .map_err(plan_errors)
    };
    match command {
        DialplanCommand::Check { files, config } => {
            let cfg = config.load()?;
            let prompts = load_prompts(&cfg)?;
            let has = |l: &str, n: &str| prompts.get(l, n).is_some();
            let names = |l: &str| prompts.names(l).into_iter().map(String::from).collect();
            let catalog = Catalog::new(&has, &NAMES).with_prompt_names(&names);
            let plans = if files.is_empty() {
                Dialplans::load_dir(&cfg.paths.dialplans, &catalog)
            } else {
                Dialplans::load_files(&files, &catalog)
            };
            let plans = plans.map_err(plan_errors)?;
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
                core.seed_demo(topup_ivr::clock::now_ms()).await?;
                let adapters = topup_ivr::topup::adapters::Adapters::new();
                let sim = topup_ivr::call::simulate::Simulation {
                    plan,
                    prompts: &prompts,
                    core: &core,
                    adapters: &adapters,
                    hlr: None,
                    caller,
                };
                for line in sim.run(&digits).await.lines {
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

/// A plan's errors, one per line.
fn plan_errors(errs: Vec<topup_ivr::dialplan::DialplanError>) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}
