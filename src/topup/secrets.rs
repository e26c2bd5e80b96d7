//! PIN secrets. Card PINs are stored as HMAC-SHA256 under a server pepper, so a card can be
//! found by its PIN without the PIN being stored; a stolen database without the pepper does
//! not reveal or confirm PINs. Wallet and funding PINs are argon2 hashes (salted, slow).
//! PINs never appear in logs, errors or `Debug` output: [`Pin`] hides them.

use std::fmt;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

pub use topup_values::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("PIN pepper {path}: {reason}")]
    PepperFile { path: String, reason: String },
    #[error("TOPUP_IVR_PIN_PEPPER must be at least 16 bytes")]
    PepperTooShort,
}

/// The server secret for card PIN lookups.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(..)")
    }
}

impl Pepper {
    pub fn new(bytes: &[u8]) -> Result<Pepper, SecretError> {
        if bytes.len() < 16 {
            return Err(SecretError::PepperTooShort);
        }
        Ok(Pepper(bytes.to_vec()))
    }

    /// From `TOPUP_IVR_PIN_PEPPER` if set; otherwise from `file`, created with a random value
    /// (mode 0600) the first time. Several nodes sharing a database must share the pepper:
    /// set the variable on each.
    pub fn load(file: &Path) -> Result<Pepper, SecretError> {
        if let Ok(v) = std::env::var("TOPUP_IVR_PIN_PEPPER") {
            return Pepper::new(v.trim().as_bytes());
        }
        let err = |reason: String| SecretError::PepperFile {
            path: file.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(file) {
            Ok(text) => {
                check_private(file).map_err(err)?;
                Pepper::new(text.trim().as_bytes())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let value = hex::encode(rand::random::<[u8; 32]>());
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                write_private(file, value.as_bytes()).map_err(|e| err(e.to_string()))?;
                Pepper::new(value.as_bytes())
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The lookup key of a card PIN.
    pub fn card_pin_hash(&self, pin: &Pin) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"card-pin:");
        mac.update(pin.expose().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The key of an incoming SMS the SMSC gave no id (its words may hold a PIN: keyed, so a
    /// copy of the database does not let anyone test PINs against it).
    pub fn mo_content_key(
        &self,
        smsc: &str,
        sender: &str,
        destination: &str,
        text: &str,
    ) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"mo:");
        for part in [smsc, sender, destination, text] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Refuses a secret file that others than its owner may read or change (as ssh does with a
/// private key): anyone who can read the pepper can test card PINs offline against a copy of
/// the database.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "others may read or change it (mode {:o}); run `chmod 600 {}`",
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

/// argon2id hash (PHC string) of a wallet or funding PIN.
pub fn hash_pin(pin: &Pin) -> String {
    Argon2::default()
        .hash_password(pin.expose().as_bytes())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Checks a PIN against its argon2 hash; a malformed stored hash never matches.
pub fn verify_pin(pin: &Pin, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(pin.expose().as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Marks a wallet or funding PIN hash keyed with the pepper (argon2's secret input): without
/// the pepper file (or variable), a copy of the database alone does not let anyone try PINs
/// against it offline. Hashes made before have no mark and are keyed when next verified.
const KEYED: &str = "k1:";

/// What checking a stored PIN hash found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    Wrong,
    Right,
    /// Right, against a hash made before hashes were keyed: store [`hash_pin_keyed`] anew.
    RightUnkeyed,
}

impl Pepper {
    fn argon2(&self) -> Option<Argon2<'_>> {
        // argon2's secret is at most 2^32-1 bytes; a pepper is 16 to a few hundred.
        Argon2::new_with_secret(
            &self.0,
            argon2::Algorithm::default(),
            argon2::Version::default(),
            argon2::Params::default(),
        )
        .ok()
    }
}

/// argon2id hash of a wallet or funding PIN, keyed with the pepper (see [`KEYED`]).
pub fn hash_pin_keyed(pin: &Pin, pepper: &Pepper) -> String {
    pepper
        .argon2()
        .and_then(|a| a.hash_password(pin.expose().as_bytes()).ok())
        .map(|h| format!("{KEYED}{h}"))
        .unwrap_or_default()
}

/// Checks a wallet or funding PIN against its stored hash, keyed or from before.
pub fn verify_pin_keyed(pin: &Pin, stored: &str, pepper: &Pepper) -> PinCheck {
    match stored.strip_prefix(KEYED) {
        Some(phc) => {
            let ok = PasswordHash::new(phc).is_ok_and(|h| {
                pepper
                    .argon2()
                    .is_some_and(|a| a.verify_password(pin.expose().as_bytes(), &h).is_ok())
            });
            if ok { PinCheck::Right } else { PinCheck::Wrong }
        }
        None if verify_pin(pin, stored) => PinCheck::RightUnkeyed,
        None => PinCheck::Wrong,
    }
}

/// `n` random decimal digits (cards' serials and PINs).
pub fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_never_print() {
        let p = Pin::new("12345678");
        assert_eq!(format!("{p} {p:?}"), "**** Pin(****)");
        assert!(p.is_well_formed());
        assert!(!Pin::new("12a4").is_well_formed());
        assert!(!Pin::new("123").is_well_formed());
    }

    #[test]
    fn card_hash_depends_on_pin_and_pepper() {
        let a = Pepper::new(b"0123456789abcdef").unwrap();
        let b = Pepper::new(b"0123456789abcdeX").unwrap();
        let pin = Pin::new("11112222");
        assert_eq!(
            a.card_pin_hash(&pin),
            a.card_pin_hash(&Pin::new("11112222"))
        );
        assert_ne!(
            a.card_pin_hash(&pin),
            a.card_pin_hash(&Pin::new("11112223"))
        );
        assert_ne!(a.card_pin_hash(&pin), b.card_pin_hash(&pin));
        assert!(!a.card_pin_hash(&pin).contains("11112222"));
        assert!(Pepper::new(b"short").is_err());
    }

    #[test]
    fn argon2_pins_verify_and_are_salted() {
        let pin = Pin::new("2468");
        let h1 = hash_pin(&pin);
        let h2 = hash_pin(&pin);
        assert!(h1.starts_with("$argon2"));
        assert_ne!(h1, h2, "salted");
        assert!(verify_pin(&pin, &h1));
        assert!(!verify_pin(&Pin::new("2469"), &h1));
        assert!(!verify_pin(&pin, "garbage"));
    }

    #[test]
    fn pepper_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/pin-pepper");
        // The variable would win; tests run without it.
        if std::env::var("TOPUP_IVR_PIN_PEPPER").is_ok() {
            return;
        }
        let a = Pepper::load(&f).unwrap();
        let b = Pepper::load(&f).unwrap();
        let pin = Pin::new("1234");
        assert_eq!(a.card_pin_hash(&pin), b.card_pin_hash(&pin));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // A pepper file others may read is refused, naming the fix.
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Pepper::load(&f).unwrap_err().to_string();
            assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o620)).unwrap();
            assert!(Pepper::load(&f).is_err());
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
            assert_eq!(
                Pepper::load(&f).unwrap().card_pin_hash(&pin),
                a.card_pin_hash(&pin)
            );
        }
    }

    #[test]
    fn keyed_pin_hashes_need_the_pepper_and_old_ones_still_verify() {
        let pepper = Pepper::new(b"pepper-0123456789abcdef").unwrap();
        let other = Pepper::new(b"another-pepper-0123456789").unwrap();
        let pin = Pin::new("4321");
        let h = hash_pin_keyed(&pin, &pepper);
        assert!(h.starts_with("k1:$argon2id$"), "{h}");
        assert_eq!(verify_pin_keyed(&pin, &h, &pepper), PinCheck::Right);
        assert_eq!(
            verify_pin_keyed(&Pin::new("4322"), &h, &pepper),
            PinCheck::Wrong
        );
        // The database alone is not enough: with another pepper (or none) the PIN fails.
        assert_eq!(verify_pin_keyed(&pin, &h, &other), PinCheck::Wrong);
        assert!(!verify_pin(&pin, h.trim_start_matches("k1:")));
        // A hash from before is still good, and asks to be keyed.
        let old = hash_pin(&pin);
        assert_eq!(
            verify_pin_keyed(&pin, &old, &pepper),
            PinCheck::RightUnkeyed
        );
        assert_eq!(
            verify_pin_keyed(&Pin::new("0000"), &old, &pepper),
            PinCheck::Wrong
        );
    }
}
