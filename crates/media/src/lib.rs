//! Pure audio: codecs, prompts, the frame player, DTMF and tones. No I/O except reading
//! prompt files at start-up.

pub mod dtmf;
pub mod g711;
pub mod loudness;
pub mod peer;
pub mod player;
pub mod prompts;
pub mod tones;
