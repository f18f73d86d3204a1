//! Job and image identifiers. Both are random UUIDs, and parsing accepts only the
//! canonical 36-character hyphenated form: an id that reaches the file store can
//! never contain a path separator, a dot or anything else a path could abuse.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Length of a hyphenated UUID (`8-4-4-4-12` hex digits).
const UUID_TEXT_LEN: usize = 36;

/// Why a path segment was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid id: ids are UUIDs like 67e55044-10b1-426f-9247-bb680e5fe0c8")]
pub struct InvalidId(pub String);

fn parse_uuid(text: &str) -> Result<Uuid, InvalidId> {
    let bad = || InvalidId(text.chars().take(64).collect());
    if text.len() != UUID_TEXT_LEN {
        return Err(bad());
    }
    Uuid::try_parse(text).map_err(|_| bad())
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(text: &str) -> Result<Self, InvalidId> {
                parse_uuid(text).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies one job (one generation request) across all dialects.
    JobId
);
uuid_id!(
    /// Identifies one generated image; its PNG is `<id>.png` in the output dir.
    ImageId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_form() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        let upper = id.to_string().to_uppercase();
        assert_eq!(upper.parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8.png",
            "67e55044-10b1-426f-9247-bb680e5fe0c/",
            "67e55044/10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert!(bad.parse::<ImageId>().is_err(), "{bad:?} accepted");
        }
    }
}
