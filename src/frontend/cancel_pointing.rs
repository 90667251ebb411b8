//! What a client's cancel key points at right now, packed with the count of its cancels in
//! flight (see the module above): one client slot's mutable part, kept small.

use super::{ServerKey, Serving};

/// What serves the client (a [`Serving`], packed) and the cancels claimed for it that have
/// not settled, in 12 bytes: with its lock, a client's slot stays in glibc's 96-byte chunk (a
/// `Serving` beside the counts took 16 more a client, and an idle client is held to 1 KiB).
#[derive(Debug, Default)]
pub(super) struct Pointing {
    key: ServerKey,
    kind: Kind,
    /// At most `u8::MAX`: a client's cancels past that many at once are not sent.
    pub(super) cancels: u8,
    /// A cancel settled without knowing whether its server got it (until a release reads it).
    pub(super) undelivered: bool,
}

/// [`Serving`]'s variant, the key apart.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Nothing,
    Waiting,
    Key,
    Keyless,
}

impl Pointing {
    pub(super) fn serving(&self) -> Serving {
        match self.kind {
            Kind::Nothing => Serving::Nothing,
            Kind::Waiting => Serving::Waiting,
            Kind::Key => Serving::Key(self.key),
            Kind::Keyless => Serving::Keyless,
        }
    }

    pub(super) fn point_at(&mut self, serving: Serving) {
        (self.kind, self.key) = match serving {
            Serving::Nothing => (Kind::Nothing, ServerKey::default()),
            Serving::Waiting => (Kind::Waiting, ServerKey::default()),
            Serving::Key(key) => (Kind::Key, key),
            Serving::Keyless => (Kind::Keyless, ServerKey::default()),
        };
    }
}
