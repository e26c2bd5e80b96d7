//! A value that is replaced whole while it is in use (hot reload of prompts, dialplans and
//! SMS texts): readers take the current version and keep it for as long as they need it (a
//! call, a message being written); a reload swaps in the next one for later readers.

use std::fmt;
use std::sync::{Arc, RwLock};

pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The version in use now.
    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `value` in use for every later reader.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

/// Clones share the value: a replace through one is seen through all.
impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Live(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_their_version_and_clones_see_a_replace() {
        let live = Live::new(1);
        let other = live.clone();
        let held = live.current();
        other.replace(2);
        assert_eq!((*held, *live.current()), (1, 2));
    }
}
