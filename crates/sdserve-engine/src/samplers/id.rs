//! Sampler and schedule identities. The engine speaks ComfyUI-style
//! snake_case ids; the AUTOMATIC1111 labels are accepted too because the
//! CLI, the A1111 API and the PNG infotext use them, and so are the legacy
//! combined names (`DPM++ 2M Karras`, `LMS Karras`...) that A1111 before 1.9
//! wrote and still accepts.

use std::fmt;
use std::str::FromStr;

/// A sampling algorithm, each equal to a diffusers scheduler class (see
/// [`super::build`] for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerId {
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `LMSDiscreteScheduler`.
    Lms,
    /// `HeunDiscreteScheduler`.
    Heun,
    /// `KDPM2DiscreteScheduler`.
    Dpm2,
    /// `KDPM2AncestralDiscreteScheduler`.
    Dpm2Ancestral,
    /// `DPMSolverMultistepScheduler` (dpmsolver++, order 2).
    DpmPp2m,
    /// `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`.
    DpmPp2mSde,
    /// `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3)`.
    DpmPp3mSde,
    /// `UniPCMultistepScheduler`.
    UniPc,
    /// `LCMScheduler`.
    Lcm,
    /// `PNDMScheduler(skip_prk_steps=True)`.
    Plms,
    /// `DDIMScheduler` (eta 0).
    Ddim,
}

impl SamplerId {
    /// Every sampler, in the order listings show them (A1111's).
    pub const ALL: [SamplerId; 13] = [
        SamplerId::DpmPp2m,
        SamplerId::DpmPp2mSde,
        SamplerId::DpmPp3mSde,
        SamplerId::Euler,
        SamplerId::EulerAncestral,
        SamplerId::Lms,
        SamplerId::Heun,
        SamplerId::Dpm2,
        SamplerId::Dpm2Ancestral,
        SamplerId::UniPc,
        SamplerId::Lcm,
        SamplerId::Ddim,
        SamplerId::Plms,
    ];

    /// The machine id (`euler_ancestral`, `dpmpp_2m_sde`...).
    pub fn id(self) -> &'static str {
        match self {
            SamplerId::EulerAncestral => "euler_ancestral",
            SamplerId::Euler => "euler",
            SamplerId::Lms => "lms",
            SamplerId::Heun => "heun",
            SamplerId::Dpm2 => "dpm2",
            SamplerId::Dpm2Ancestral => "dpm2_ancestral",
            SamplerId::DpmPp2m => "dpmpp_2m",
            SamplerId::DpmPp2mSde => "dpmpp_2m_sde",
            SamplerId::DpmPp3mSde => "dpmpp_3m_sde",
            SamplerId::UniPc => "unipc",
            SamplerId::Lcm => "lcm",
            SamplerId::Plms => "plms",
            SamplerId::Ddim => "ddim",
        }
    }

    /// The AUTOMATIC1111 label (`Euler a`, `DPM++ 2M SDE`...).
    pub fn label(self) -> &'static str {
        match self {
            SamplerId::EulerAncestral => "Euler a",
            SamplerId::Euler => "Euler",
            SamplerId::Lms => "LMS",
            SamplerId::Heun => "Heun",
            SamplerId::Dpm2 => "DPM2",
            SamplerId::Dpm2Ancestral => "DPM2 a",
            SamplerId::DpmPp2m => "DPM++ 2M",
            SamplerId::DpmPp2mSde => "DPM++ 2M SDE",
            SamplerId::DpmPp3mSde => "DPM++ 3M SDE",
            SamplerId::UniPc => "UniPC",
            SamplerId::Lcm => "LCM",
            SamplerId::Plms => "PLMS",
            SamplerId::Ddim => "DDIM",
        }
    }

    /// Other names clients send: k-diffusion's `k_*` ids and A1111's aliases.
    fn aliases(self) -> &'static [&'static str] {
        match self {
            SamplerId::EulerAncestral => &["euler_a", "k_euler_a", "k_euler_ancestral"],
            SamplerId::Euler => &["k_euler"],
            SamplerId::Lms => &["k_lms"],
            SamplerId::Heun => &["k_heun"],
            SamplerId::Dpm2 => &["k_dpm_2"],
            SamplerId::Dpm2Ancestral => &["dpm2_a", "k_dpm_2_a", "k_dpm_2_ancestral"],
            SamplerId::DpmPp2m => &["k_dpmpp_2m"],
            SamplerId::DpmPp2mSde => &["k_dpmpp_2m_sde"],
            SamplerId::DpmPp3mSde => &["k_dpmpp_3m_sde"],
            SamplerId::UniPc => &["uni_pc"],
            SamplerId::Lcm => &["k_lcm"],
            SamplerId::Plms => &[],
            SamplerId::Ddim => &[],
        }
    }

    /// The schedule types this sampler runs with: all for the samplers that
    /// work on sigmas, only the timestep spacings for DDIM and PLMS, and none
    /// but its own for LCM (whose timesteps ignore the spacing).
    pub fn schedule_types(self) -> &'static [ScheduleType] {
        match self {
            SamplerId::Lcm => &[ScheduleType::Automatic],
            SamplerId::Ddim | SamplerId::Plms => {
                &[ScheduleType::Automatic, ScheduleType::SgmUniform]
            }
            _ => &ScheduleType::ALL,
        }
    }
}

impl fmt::Display for SamplerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a run's noise levels are spaced (A1111's "Schedule type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScheduleType {
    /// The sampler's own schedule from the model's scheduler config.
    #[default]
    Automatic,
    /// `use_karras_sigmas=True`.
    Karras,
    /// `use_exponential_sigmas=True`.
    Exponential,
    /// `timestep_spacing="trailing"` (SGM's uniform spacing).
    SgmUniform,
    /// `use_beta_sigmas=True`.
    Beta,
}

impl ScheduleType {
    /// Every schedule type, in the order listings show them.
    pub const ALL: [ScheduleType; 5] = [
        ScheduleType::Automatic,
        ScheduleType::Karras,
        ScheduleType::Exponential,
        ScheduleType::SgmUniform,
        ScheduleType::Beta,
    ];

    /// A1111's scheduler id (`karras`, `sgm_uniform`...).
    pub fn id(self) -> &'static str {
        match self {
            ScheduleType::Automatic => "automatic",
            ScheduleType::Karras => "karras",
            ScheduleType::Exponential => "exponential",
            ScheduleType::SgmUniform => "sgm_uniform",
            ScheduleType::Beta => "beta",
        }
    }

    /// A1111's label (`Karras`, `SGM Uniform`...), as infotexts write it.
    pub fn label(self) -> &'static str {
        match self {
            ScheduleType::Automatic => "Automatic",
            ScheduleType::Karras => "Karras",
            ScheduleType::Exponential => "Exponential",
            ScheduleType::SgmUniform => "SGM Uniform",
            ScheduleType::Beta => "Beta",
        }
    }
}

impl fmt::Display for ScheduleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The error for a name that is no known sampler; lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sampler {0:?}; known samplers: {list}", list = sampler_list())]
pub struct UnknownSampler(pub String);

/// The error for a name that is no known schedule type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown schedule type {0:?}; known schedule types: Automatic, Karras, Exponential, SGM Uniform, Beta (or automatic, karras, exponential, sgm_uniform, beta)")]
pub struct UnknownSchedule(pub String);

fn sampler_list() -> String {
    let labels: Vec<&str> = SamplerId::ALL.iter().map(|s| s.label()).collect();
    let ids: Vec<&str> = SamplerId::ALL.iter().map(|s| s.id()).collect();
    format!(
        "{} (or {}); a legacy name with a schedule suffix such as \"DPM++ 2M Karras\" is also accepted",
        labels.join(", "),
        ids.join(", ")
    )
}

fn find_sampler(name: &str) -> Option<SamplerId> {
    let wanted = name.trim();
    SamplerId::ALL.into_iter().find(|s| {
        s.id().eq_ignore_ascii_case(wanted)
            || s.label().eq_ignore_ascii_case(wanted)
            || s.aliases().iter().any(|a| a.eq_ignore_ascii_case(wanted))
    })
}

impl FromStr for SamplerId {
    type Err = UnknownSampler;

    /// Accepts the id, the label or an alias, ignoring case and surrounding
    /// spaces. Legacy names with a schedule are [`SamplerName`]'s business.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        find_sampler(name).ok_or_else(|| UnknownSampler(name.to_string()))
    }
}

impl FromStr for ScheduleType {
    type Err = UnknownSchedule;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim();
        ScheduleType::ALL
            .into_iter()
            .find(|s| s.id().eq_ignore_ascii_case(wanted) || s.label().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownSchedule(name.to_string()))
    }
}

/// A sampler name as clients send it: a sampler, possibly carrying a
/// schedule the legacy way (`DPM++ 2M Karras`, `dpmpp_2m_karras`,
/// `k_lms_karras`). `schedule` is `None` when the name has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerName {
    pub sampler: SamplerId,
    pub schedule: Option<ScheduleType>,
}

/// The error for a sampler asked to run with a schedule type it does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {sampler} sampler does not run with the {schedule} schedule type; it takes: {list}", list = allowed(*.sampler))]
pub struct UnsupportedSchedule {
    pub sampler: SamplerId,
    pub schedule: ScheduleType,
}

fn allowed(sampler: SamplerId) -> String {
    let labels: Vec<&str> = sampler.schedule_types().iter().map(|t| t.label()).collect();
    labels.join(", ")
}

impl SamplerName {
    /// The sampler and schedule type to run: an `explicit` schedule type
    /// other than `Automatic` wins (as A1111 resolves `sampler_name` and
    /// `scheduler`), else the one the name carries, else `Automatic`.
    pub fn with_schedule(
        self,
        explicit: Option<ScheduleType>,
    ) -> Result<(SamplerId, ScheduleType), UnsupportedSchedule> {
        let schedule = match explicit {
            Some(t) if t != ScheduleType::Automatic => t,
            _ => self.schedule.unwrap_or_default(),
        };
        if !self.sampler.schedule_types().contains(&schedule) {
            return Err(UnsupportedSchedule {
                sampler: self.sampler,
                schedule,
            });
        }
        Ok((self.sampler, schedule))
    }
}

impl FromStr for SamplerName {
    type Err = UnknownSampler;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if let Some(sampler) = find_sampler(name) {
            return Ok(SamplerName {
                sampler,
                schedule: None,
            });
        }
        let trimmed = name.trim();
        // "<sampler> <Schedule>" (labels) or "<sampler>_<schedule>" (ids).
        for schedule in [ScheduleType::Karras, ScheduleType::Exponential] {
            for separator in [' ', '_'] {
                let suffix = format!("{separator}{}", schedule.id());
                let lower = trimmed.to_ascii_lowercase();
                if let Some(head) = lower.strip_suffix(&suffix) {
                    let head = &trimmed[..head.len()];
                    if let Some(sampler) = find_sampler(head) {
                        if sampler.schedule_types().contains(&schedule) {
                            return Ok(SamplerName {
                                sampler,
                                schedule: Some(schedule),
                            });
                        }
                    }
                }
            }
        }
        Err(UnknownSampler(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_labels_and_aliases_round_trip() {
        for s in SamplerId::ALL {
            assert_eq!(s.id().parse::<SamplerId>().unwrap(), s);
            assert_eq!(s.label().parse::<SamplerId>().unwrap(), s);
            assert_eq!(s.label().to_uppercase().parse::<SamplerId>().unwrap(), s);
            for alias in s.aliases() {
                assert_eq!(alias.parse::<SamplerId>().unwrap(), s);
            }
        }
        for t in ScheduleType::ALL {
            assert_eq!(t.id().parse::<ScheduleType>().unwrap(), t);
            assert_eq!(t.label().parse::<ScheduleType>().unwrap(), t);
        }
        assert!("DPM++ SDE".parse::<SamplerId>().is_err());
        assert!("".parse::<SamplerId>().is_err());
        assert!("Uniform".parse::<ScheduleType>().is_err());
    }

    #[test]
    fn legacy_names_carry_their_schedule() {
        let cases = [
            (
                "DPM++ 2M Karras",
                SamplerId::DpmPp2m,
                Some(ScheduleType::Karras),
            ),
            (
                "dpmpp_2m_karras",
                SamplerId::DpmPp2m,
                Some(ScheduleType::Karras),
            ),
            ("LMS Karras", SamplerId::Lms, Some(ScheduleType::Karras)),
            ("k_lms_karras", SamplerId::Lms, Some(ScheduleType::Karras)),
            (
                "DPM2 a Karras",
                SamplerId::Dpm2Ancestral,
                Some(ScheduleType::Karras),
            ),
            (
                "DPM++ 2M SDE Karras",
                SamplerId::DpmPp2mSde,
                Some(ScheduleType::Karras),
            ),
            (
                "DPM++ 3M SDE Exponential",
                SamplerId::DpmPp3mSde,
                Some(ScheduleType::Exponential),
            ),
            (
                "dpm++ 2m sde exponential",
                SamplerId::DpmPp2mSde,
                Some(ScheduleType::Exponential),
            ),
            ("Euler a", SamplerId::EulerAncestral, None),
            (" UniPC ", SamplerId::UniPc, None),
        ];
        for (name, sampler, schedule) in cases {
            assert_eq!(
                name.parse::<SamplerName>().unwrap(),
                SamplerName { sampler, schedule },
                "{name}"
            );
        }
        // DDIM and PLMS have no sigmas to space; a suffix there is no name.
        for bad in [
            "DDIM Karras",
            "LCM Karras",
            "Karras",
            "DPM++ 2M Beta",
            "Euler Karras!",
        ] {
            let err = bad.parse::<SamplerName>().unwrap_err();
            assert!(err.to_string().contains("DPM++ 2M SDE"), "{err}");
        }
    }
}
