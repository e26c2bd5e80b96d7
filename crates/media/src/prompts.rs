//! The prompt store: every audio file under `prompts/<lang>/`, decoded once at start-up,
//! resampled to 8 kHz mono (and 16 kHz when a channel needs wideband), and encoded once per
//! codec into 20 ms frames that all calls share through `Arc<Prompt>`.
//!
//! Each language directory has a `manifest.toml` naming every phrase and its text:
//!
//! ```toml
//! [prompts]
//! echo-welcome = "Welcome to the keypad test line."
//! ```
//!
//! A phrase listed there without a file, or a file that cannot be decoded, is a start-up error
//! naming the file. Operators replace a generated prompt by dropping a recording with the same
//! name (WAV, MP3, OGG/Vorbis or FLAC, any rate, mono or stereo) into the directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use serde::Deserialize;

use super::g711::Codec;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// File extensions tried for a phrase, in order.
pub const EXTENSIONS: [&str; 4] = ["wav", "mp3", "ogg", "flac"];

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{manifest}: lists `{name}` but there is no {dir}/{name}.wav (or .mp3/.ogg/.flac)")]
    Missing {
        manifest: PathBuf,
        dir: String,
        name: String,
    },
    #[error("{0}: no language directories (expected e.g. {0}/en/manifest.toml)")]
    Empty(PathBuf),
    #[error(
        "prompts directory {dir} not found (a relative path is taken from the working directory, {cwd}: run from the checkout, or set `prompts` under [paths] in the config)"
    )]
    NoDirectory { dir: PathBuf, cwd: String },
}

fn file_err(path: &Path, reason: impl ToString) -> PromptError {
    PromptError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    prompts: BTreeMap<String, Phrase>,
}

/// A phrase's text, or its text and the synthesis voice when it differs from the directory's
/// language (a language menu offers each language in its own voice).
#[derive(Deserialize)]
#[serde(untagged)]
enum Phrase {
    Text(String),
    Voiced {
        text: String,
        #[allow(dead_code)] // read by scripts/gen-prompts.py
        voice: String,
    },
}

impl Phrase {
    fn text(&self) -> &str {
        match self {
            Phrase::Text(t) | Phrase::Voiced { text: t, .. } => t,
        }
    }
}

/// One phrase in one language, ready to send.
#[derive(Debug)]
pub struct Prompt {
    pub name: String,
    pub language: String,
    /// The text the phrase says (from the manifest), for logs and staff pages.
    pub text: String,
    /// 8 kHz linear audio, padded with silence to a whole number of frames.
    pcm8k: Vec<i16>,
    pcmu: Vec<u8>,
    pcma: Vec<u8>,
    /// 16 kHz linear audio (twice the frames' samples), only when the store was loaded with
    /// wideband on.
    pcm16k: Option<Vec<i16>>,
}

impl Prompt {
    /// Builds a prompt from 8 kHz samples (used by the loader and by tests).
    pub fn from_pcm8k(name: &str, language: &str, text: &str, mut pcm: Vec<i16>) -> Prompt {
        let frames = pcm.len().div_ceil(FRAME_SAMPLES).max(1);
        pcm.resize(frames * FRAME_SAMPLES, 0);
        let mut pcmu = vec![0u8; pcm.len()];
        let mut pcma = vec![0u8; pcm.len()];
        Codec::Pcmu.encode(&pcm, &mut pcmu);
        Codec::Pcma.encode(&pcm, &mut pcma);
        Prompt {
            name: name.to_string(),
            language: language.to_string(),
            text: text.to_string(),
            pcm8k: pcm,
            pcmu,
            pcma,
            pcm16k: None,
        }
    }

    /// Number of 20 ms frames.
    pub fn frames(&self) -> usize {
        self.pcm8k.len() / FRAME_SAMPLES
    }

    /// The encoded payload of frame `i` (160 bytes for G.711).
    pub fn frame(&self, codec: Codec, i: usize) -> &[u8] {
        let buf = match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        };
        &buf[i * FRAME_SAMPLES..(i + 1) * FRAME_SAMPLES]
    }

    /// 8 kHz linear samples of the whole prompt.
    pub fn pcm8k(&self) -> &[i16] {
        &self.pcm8k
    }

    /// 8 kHz linear samples of frame `i` (160).
    pub fn frame_pcm8k(&self, i: usize) -> &[i16] {
        &self.pcm8k[i * FRAME_SAMPLES..(i + 1) * FRAME_SAMPLES]
    }

    /// 16 kHz linear samples of frame `i` (320), if loaded with wideband.
    pub fn frame_pcm16k(&self, i: usize) -> Option<&[i16]> {
        self.pcm16k
            .as_ref()
            .and_then(|b| b.get(i * FRAME_SAMPLES * 2..(i + 1) * FRAME_SAMPLES * 2))
    }

    pub fn duration_ms(&self) -> u64 {
        self.frames() as u64 * 20
    }
}

/// All prompts, by language then name.
#[derive(Debug, Default)]
pub struct PromptStore {
    langs: HashMap<String, HashMap<String, Arc<Prompt>>>,
}

/// Load-time options.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Also prepare 16 kHz L16 frames (for softswitch media channels that want wideband).
    pub wideband: bool,
}

impl PromptStore {
    /// Loads every `<dir>/<lang>/manifest.toml` and its audio files.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<PromptStore, PromptError> {
        let mut store = PromptStore::default();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => PromptError::NoDirectory {
                    dir: dir.to_path_buf(),
                    cwd: std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                },
                _ => file_err(dir, e),
            })?
            .filter_map(Result::ok)
            .filter(|e| e.path().join("manifest.toml").is_file())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let lang = entry.file_name().to_string_lossy().into_owned();
            let prompts = load_language(&entry.path(), &lang, opts)?;
            store.langs.insert(lang, prompts);
        }
        if store.langs.is_empty() {
            return Err(PromptError::Empty(dir.to_path_buf()));
        }
        Ok(store)
    }

    /// Adds a prompt (tests and generated tones).
    pub fn insert(&mut self, prompt: Prompt) {
        self.langs
            .entry(prompt.language.clone())
            .or_default()
            .insert(prompt.name.clone(), Arc::new(prompt));
    }

    pub fn get(&self, language: &str, name: &str) -> Option<Arc<Prompt>> {
        self.langs.get(language)?.get(name).cloned()
    }

    /// The prompt names of one language, sorted.
    pub fn names(&self, language: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .langs
            .get(language)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.langs.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.langs.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn load_language(
    dir: &Path,
    lang: &str,
    opts: LoadOptions,
) -> Result<HashMap<String, Arc<Prompt>>, PromptError> {
    let manifest_path = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| file_err(&manifest_path, e))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| file_err(&manifest_path, e))?;
    let mut out = HashMap::new();
    for (name, phrase) in &manifest.prompts {
        let path = EXTENSIONS
            .iter()
            .map(|ext| dir.join(format!("{name}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| PromptError::Missing {
                manifest: manifest_path.clone(),
                dir: dir.display().to_string(),
                name: name.clone(),
            })?;
        let (samples, rate) = decode_file(&path)?;
        let pcm8k = to_i16(&resample(&samples, rate, 8000).map_err(|e| file_err(&path, e))?);
        let mut prompt = Prompt::from_pcm8k(name, lang, phrase.text(), pcm8k);
        if opts.wideband {
            let mut wide =
                to_i16(&resample(&samples, rate, 16000).map_err(|e| file_err(&path, e))?);
            wide.resize(prompt.frames() * FRAME_SAMPLES * 2, 0);
            prompt.pcm16k = Some(wide);
        }
        out.insert(name.clone(), Arc::new(prompt));
    }
    Ok(out)
}

/// Decodes an audio file to mono f32 in [-1, 1] and its sample rate.
pub fn decode_file(path: &Path) -> Result<(Vec<f32>, u32), PromptError> {
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    // hound reads PCM and float WAV; anything else (µ-law/A-law WAV, MP3, OGG, FLAC) goes
    // through symphonia.
    let (samples, rate) = if is_wav {
        decode_wav(path).or_else(|e| decode_symphonia(path).map_err(|_| e))
    } else {
        decode_symphonia(path)
    }
    .map_err(|e| file_err(path, format!("cannot decode: {e}")))?;
    if samples.is_empty() {
        return Err(file_err(path, "contains no audio"));
    }
    Ok((samples, rate))
}

fn decode_wav(path: &Path) -> Result<(Vec<f32>, u32), String> {
    let reader = hound::WavReader::open(path).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        }
    };
    Ok((downmix(&interleaved, channels), spec.sample_rate))
}

fn decode_symphonia(path: &Path) -> Result<(Vec<f32>, u32), String> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    let file = File::open(path).map_err(|e| e.to_string())?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| e.to_string())?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("no audio codec parameters")?
        .clone();
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| e.to_string())?;
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut mono = Vec::new();
    let mut buf: Vec<f32> = Vec::new();
    while let Some(packet) = format.next_packet().map_err(|e| e.to_string())? {
        if packet.track_id != track_id {
            continue;
        }
        let audio = decoder.decode(&packet).map_err(|e| e.to_string())?;
        let spec = audio.spec();
        rate = spec.rate();
        let channels = spec.channels().count().max(1);
        buf.resize(audio.samples_interleaved(), 0.0);
        audio.copy_to_slice_interleaved(&mut buf);
        mono.extend(downmix(&buf, channels));
    }
    if rate == 0 {
        return Err("unknown sample rate".into());
    }
    Ok((mono, rate))
}

fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// Resamples a whole clip (rubato's FFT resampler: fixed ratio, high quality).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| e.to_string())?;
    let out = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }

    fn tone(rate: u32, freq: f32, secs: f32) -> Vec<i16> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| {
                (8000.0 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()) as i16
            })
            .collect()
    }

    /// A prompts directory with one language, `en`, and its manifest.
    fn prompts_dir(manifest: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let en = dir.join("en");
        std::fs::create_dir_all(&en).unwrap();
        std::fs::write(en.join("manifest.toml"), manifest).unwrap();
        (tmp, dir, en)
    }

    #[test]
    fn loads_resamples_and_encodes_once_per_codec() {
        let (_tmp, dir, en) =
            prompts_dir("[prompts]\nhello = \"Hello\"\nstereo = \"Two channels\"\n");
        write_wav(&en.join("hello.wav"), 16000, 1, &tone(16000, 440.0, 0.5));
        let stereo: Vec<i16> = tone(44100, 440.0, 0.25)
            .into_iter()
            .flat_map(|s| [s, s])
            .collect();
        write_wav(&en.join("stereo.wav"), 44100, 2, &stereo);

        let store = PromptStore::load(&dir, LoadOptions { wideband: true }).unwrap();
        let p = store.get("en", "hello").unwrap();
        assert_eq!(p.frames(), 25, "0.5 s is 25 frames of 20 ms");
        assert_eq!(p.frame(Codec::Pcmu, 0).len(), 160);
        assert_eq!(p.frame_pcm16k(0).unwrap().len(), 320);
        assert_eq!(p.frame_pcm8k(1), &p.pcm8k()[160..320]);
        // The 440 Hz tone survives resampling at its level (8000 peak -> RMS 5657).
        let mid = &p.pcm8k()[800..2400];
        let rms = (mid.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
        assert!((rms - 5657.0).abs() < 150.0, "rms {rms}");
        let s = store.get("en", "stereo").unwrap();
        assert!((s.frames() as i64 - 13).abs() <= 1, "{}", s.frames());
    }

    #[test]
    fn mp3_and_ogg_prompts_decode_to_the_same_tone() {
        // The repository's recordings, two levels above this crate.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../audio-fixtures");
        for file in ["tone-440hz.mp3", "tone-440hz.ogg"] {
            let (samples, rate) = decode_file(&fixtures.join(file)).unwrap();
            assert_eq!(rate, 16000, "{file}");
            let pcm = to_i16(&resample(&samples, rate, 8000).unwrap());
            // 0.5 s (MP3 adds encoder padding), and a 440 Hz sine of peak 0.25: RMS 0.177.
            assert!(
                (3900..=5200).contains(&pcm.len()),
                "{file}: {} samples",
                pcm.len()
            );
            let mid = &pcm[1000..3000];
            let rms = (mid
                .iter()
                .map(|&s| (s as f64 / 32768.0).powi(2))
                .sum::<f64>()
                / 2000.0)
                .sqrt();
            assert!((rms - 0.177).abs() < 0.02, "{file}: rms {rms}");
            let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            assert!(
                (210..=230).contains(&crossings),
                "{file}: {crossings} zero crossings in 0.25 s"
            );
        }
    }

    #[test]
    fn missing_prompt_names_the_file() {
        let (_tmp, dir, _) = prompts_dir("[prompts]\nbye = \"Goodbye\"\n");
        let err = PromptStore::load(&dir, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bye.wav"), "{err}");
    }

    #[test]
    fn undecodable_prompt_names_the_file() {
        let (_tmp, dir, en) = prompts_dir("[prompts]\nbad = \"x\"\nworse = \"y\"\n");
        std::fs::write(en.join("bad.wav"), b"RIFF....not a wav").unwrap();
        let err = PromptStore::load(&dir, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.wav") && err.contains("cannot decode"),
            "{err}"
        );
        std::fs::remove_file(en.join("bad.wav")).unwrap();
        write_wav(&en.join("bad.wav"), 8000, 1, &[1, 2, 3]);
        std::fs::write(en.join("worse.mp3"), b"\xff\xfbnot really mp3").unwrap();
        let err = PromptStore::load(&dir, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("worse.mp3"), "{err}");
    }
}
