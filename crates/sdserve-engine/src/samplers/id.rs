//! Sampler identities. The engine speaks ComfyUI-style snake_case ids; the
//! AUTOMATIC1111 display labels are accepted too because the CLI and the PNG
//! infotext use them.

use std::fmt;
use std::str::FromStr;

/// A sampling algorithm, each equal to a diffusers scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerId {
    /// `DDIMScheduler` (eta 0).
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (dpmsolver++, order 2).
    DpmPp2m,
    /// `DPMSolverMultistepScheduler` with `use_karras_sigmas=True`.
    DpmPp2mKarras,
}

impl SamplerId {
    /// Every sampler, in the order listings show them.
    pub const ALL: [SamplerId; 5] = [
        SamplerId::EulerAncestral,
        SamplerId::Euler,
        SamplerId::DpmPp2m,
        SamplerId::DpmPp2mKarras,
        SamplerId::Ddim,
    ];

    /// The machine id (`euler_ancestral`, `dpmpp_2m_karras`...).
    pub fn id(self) -> &'static str {
        match self {
            SamplerId::Ddim => "ddim",
            SamplerId::Euler => "euler",
            SamplerId::EulerAncestral => "euler_ancestral",
            SamplerId::DpmPp2m => "dpmpp_2m",
            SamplerId::DpmPp2mKarras => "dpmpp_2m_karras",
        }
    }

    /// The AUTOMATIC1111 label (`Euler a`, `DPM++ 2M Karras`...).
    pub fn label(self) -> &'static str {
        match self {
            SamplerId::Ddim => "DDIM",
            SamplerId::Euler => "Euler",
            SamplerId::EulerAncestral => "Euler a",
            SamplerId::DpmPp2m => "DPM++ 2M",
            SamplerId::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }

    /// True when the sampler draws fresh noise at every step.
    pub fn is_ancestral(self) -> bool {
        matches!(self, SamplerId::EulerAncestral)
    }
}

impl fmt::Display for SamplerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The error for a name that is no known sampler; lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {0:?}; known samplers: Euler a, Euler, DPM++ 2M, DPM++ 2M Karras, DDIM (or euler_ancestral, euler, dpmpp_2m, dpmpp_2m_karras, ddim)")]
pub struct UnknownSampler(pub String);

impl FromStr for SamplerId {
    type Err = UnknownSampler;

    /// Accepts the id or the label, ignoring case and surrounding spaces.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim();
        SamplerId::ALL
            .into_iter()
            .find(|s| s.id().eq_ignore_ascii_case(wanted) || s.label().eq_ignore_ascii_case(wanted))
            .or(match wanted.to_ascii_lowercase().as_str() {
                "euler_a" | "k_euler_a" | "k_euler_ancestral" => Some(SamplerId::EulerAncestral),
                "k_euler" => Some(SamplerId::Euler),
                _ => None,
            })
            .ok_or_else(|| UnknownSampler(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_labels_round_trip() {
        for s in SamplerId::ALL {
            assert_eq!(s.id().parse::<SamplerId>().unwrap(), s);
            assert_eq!(s.label().parse::<SamplerId>().unwrap(), s);
            assert_eq!(s.label().to_uppercase().parse::<SamplerId>().unwrap(), s);
        }
        assert_eq!(
            "Euler a".parse::<SamplerId>().unwrap(),
            SamplerId::EulerAncestral
        );
        assert!("PLMS".parse::<SamplerId>().is_err());
        assert!("".parse::<SamplerId>().is_err());
    }
}
