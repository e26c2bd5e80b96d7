//! Loading what the service runs on: prompts and dialplans, the database and the top-up core,
//! the SMS texts, the HLR client (also used by the check commands and the CLI).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::dialplan::{Catalog, DialplanError, Dialplans};
use crate::live::Live;
use crate::media::prompts::{LoadOptions, PromptError, PromptStore};
use crate::sms::messages::SmsTexts;
use crate::store::{Db, StoreError};
use crate::topup::Core;
use crate::topup::numbers::Hlr;
use crate::topup::secrets::Pepper;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("prompts: {0}")]
    Prompts(#[from] PromptError),
    #[error("dialplans:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Dialplans(Vec<DialplanError>),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("SMS messages:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Sms(Vec<crate::sms::messages::MessagesError>),
    #[error("{0}")]
    Secret(#[from] crate::topup::secrets::SecretError),
    #[error("{0}")]
    Topup(#[from] crate::topup::TopupError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Loads prompts and dialplans as `serve` does (also used by the check commands).
pub fn load_content(cfg: &Config) -> Result<(PromptStore, Dialplans), ServeError> {
    // 16 kHz prompt audio only where a softswitch streams it (it doubles the linear audio).
    let wideband = cfg
        .freeswitch
        .as_ref()
        .is_some_and(|f| f.sample_rate == 16000);
    let prompts = PromptStore::load(&cfg.paths.prompts, LoadOptions { wideband })?;
    let has_prompt = |lang: &str, name: &str| prompts.get(lang, name).is_some();
    let names = |lang: &str| prompts.names(lang).into_iter().map(String::from).collect();
    let dialplans = Dialplans::load_dir(
        &cfg.paths.dialplans,
        &Catalog::new(&has_prompt, &crate::sms::messages::NAMES).with_prompt_names(&names),
    )
    .map_err(ServeError::Dialplans)?;
    Ok((prompts, dialplans))
}

/// Opens the database (Postgres when `database.url` is set, else SQLite in the data
/// directory) and the top-up core over it.
pub async fn open_core(cfg: &Config) -> Result<Core, ServeError> {
    Ok(open_core_and_texts(cfg).await?.0)
}

/// [`open_core`], and the SMS texts its notifier writes with when an SMSC is configured.
pub async fn open_core_and_texts(cfg: &Config) -> Result<(Core, Option<SmsTexts>), ServeError> {
    let db = match &cfg.database_url {
        Some(url) => Db::connect(url).await?,
        None => Db::open(&cfg.paths.data_dir).await?,
    };
    let pepper = Pepper::load(&cfg.security.pin_pepper_file)?;
    let core =
        Core::new(db, pepper, cfg.security.auth).with_call_limits(cfg.calling.limits.clone());
    Ok(match load_sms(cfg)? {
        Some(m) => {
            let texts = Live::new(m);
            let outbox = crate::sms::outbox::SmsOutbox::new(texts.clone());
            (core.with_notifier(Arc::new(outbox)), Some(texts))
        }
        None => (core, None),
    })
}

/// The SMS texts and keywords, checked, when an SMSC is configured (else SMS are off).
pub fn load_sms(cfg: &Config) -> Result<Option<crate::sms::messages::Messages>, ServeError> {
    if !cfg.sms.enabled() {
        return Ok(None);
    }
    sms_messages(cfg).map(Some)
}

/// The SMS texts and keywords of `paths.sms`, checked (also for `sms check`).
pub fn sms_messages(cfg: &Config) -> Result<crate::sms::messages::Messages, ServeError> {
    crate::sms::messages::Messages::load_dir(&cfg.paths.sms, &cfg.sms.language)
        .map_err(ServeError::Sms)
}

/// The HLR client, when one is configured.
pub fn hlr(cfg: &Config) -> Option<Hlr> {
    cfg.hlr.as_ref().map(|h| {
        let key = h.api_key_env.as_deref().and_then(|v| std::env::var(v).ok());
        Hlr::new(&h.url, key, h.timeout, h.cache_ttl)
    })
}

/// The content files as seen at one time: (path, size, modified).
pub(super) type ContentSignature = Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>;

/// A fingerprint of the prompt and dialplan files (names, sizes, modification times).
pub(super) fn content_signature(cfg: &Config) -> ContentSignature {
    let mut out = vec![];
    let mut dirs = vec![cfg.paths.dialplans.clone()];
    if cfg.sms.enabled() {
        dirs.push(cfg.paths.sms.clone());
    }
    if let Ok(langs) = std::fs::read_dir(&cfg.paths.prompts) {
        dirs.extend(langs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                out.push((e.path(), m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}
