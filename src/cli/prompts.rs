//! `topup-ivr prompts`: load every prompt as `serve` would, and keep their loudness even.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use topup_ivr::media::loudness::{self, TARGET_LUFS, TOLERANCE_DB};
use topup_ivr::media::prompts::{EXTENSIONS, PromptStore, decode_file};

use super::ConfigArgs;

#[derive(Subcommand)]
pub(crate) enum PromptsCommand {
    /// Load every prompt as `serve` would, and report those louder or quieter than the rest
    /// (integrated loudness, ITU-R BS.1770) by more than the tolerance.
    Check(ConfigArgs),
    /// Bring WAV prompts to one loudness (in place; the peak stays under −1 dBFS).
    Normalize {
        #[command(flatten)]
        config: ConfigArgs,
        /// Loudness to reach, in LUFS.
        #[arg(long, default_value_t = TARGET_LUFS, allow_negative_numbers = true)]
        target: f64,
        /// Only these files (default: every WAV in the prompts directory).
        files: Vec<PathBuf>,
    },
}

pub(crate) fn run(command: PromptsCommand) -> Result<()> {
    match command {
        PromptsCommand::Check(args) => {
            let cfg = args.load()?;
            let store = PromptStore::load(&cfg.paths.prompts, Default::default())?;
            let mut langs: Vec<&str> = store.languages().collect();
            langs.sort();
            let measured = measure(&audio_files(&cfg.paths.prompts)?)?;
            let mut outliers = 0;
            for (path, lufs) in &measured {
                if (lufs - TARGET_LUFS).abs() > TOLERANCE_DB {
                    outliers += 1;
                    let how = if *lufs < TARGET_LUFS {
                        "quieter"
                    } else {
                        "louder"
                    };
                    println!(
                        "{}: {lufs:.1} LUFS, {:.1} dB {how} than the prompts' {TARGET_LUFS} LUFS",
                        path.display(),
                        (lufs - TARGET_LUFS).abs()
                    );
                }
            }
            if outliers > 0 {
                bail!(
                    "{outliers} of {} prompts are more than {TOLERANCE_DB} dB from {TARGET_LUFS} LUFS: callers hear them jump in volume (`topup-ivr prompts normalize FILE...` evens WAV files)",
                    measured.len()
                );
            }
            println!(
                "ok: {} prompts in {}, each within {TOLERANCE_DB} dB of {TARGET_LUFS} LUFS",
                store.len(),
                langs.join(", ")
            );
        }
        PromptsCommand::Normalize {
            config,
            target,
            files,
        } => {
            let files = if files.is_empty() {
                let cfg = config.load()?;
                audio_files(&cfg.paths.prompts)?
            } else {
                files
            };
            for path in files {
                if let Some((before, after)) = normalize(&path, target)? {
                    println!("{}: {before:.1} -> {after:.1} LUFS", path.display());
                }
            }
        }
    }
    Ok(())
}

/// Every audio file under the language directories of `dir`.
fn audio_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let langs = std::fs::read_dir(dir).with_context(|| format!("prompts {}", dir.display()))?;
    for lang in langs {
        let lang = lang?.path();
        if !lang.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&lang)? {
            let f = f?.path();
            let audio = f
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if audio {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The loudness of each file that is not silence.
fn measure(files: &[PathBuf]) -> Result<Vec<(PathBuf, f64)>> {
    let mut out = vec![];
    for f in files {
        let (samples, rate) = decode_file(f)?;
        if let Some(lufs) = loudness::integrated_lufs(&samples, rate) {
            out.push((f.clone(), lufs));
        }
    }
    Ok(out)
}

/// Rewrites a 16-bit WAV file at `target` loudness; returns its loudness before and after
/// (None: silence, nothing to do).
fn normalize(path: &Path, target: f64) -> Result<Option<(f64, f64)>> {
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    let reader = hound::WavReader::open(path).ok().filter(|r| {
        let s = r.spec();
        is_wav && s.sample_format == hound::SampleFormat::Int && s.bits_per_sample == 16
    });
    let Some(reader) = reader else {
        bail!(
            "{}: only 16-bit PCM WAV files are normalised; convert it first (e.g. `sox {} -b 16 out.wav`)",
            path.display(),
            path.display()
        );
    };
    let spec = reader.spec();
    let raw: Vec<i16> = reader.into_samples::<i16>().collect::<Result<_, _>>()?;
    let (samples, rate) = decode_file(path)?;
    let Some(before) = loudness::integrated_lufs(&samples, rate) else {
        return Ok(None);
    };
    let gain = loudness::gain_to(before, loudness::peak(&samples), target);
    let scaled: Vec<i16> = raw
        .iter()
        .map(|&s| (s as f32 * gain).round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    // Written beside it and renamed over it: a prompt is never left half-written.
    let tmp = path.with_extension("wav.part");
    let mut w = hound::WavWriter::create(&tmp, spec)?;
    for s in &scaled {
        w.write_sample(*s)?;
    }
    w.finalize()?;
    std::fs::rename(&tmp, path)?;
    let (after, rate) = decode_file(path)?;
    Ok(Some((
        before,
        loudness::integrated_lufs(&after, rate).unwrap_or(f64::NEG_INFINITY),
    )))
}
