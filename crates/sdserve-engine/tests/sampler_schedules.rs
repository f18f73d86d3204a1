//! Each sampler's timesteps, built from a fixture's own `scheduler_config.json`,
//! equal those diffusers' scheduler sets for the same config (recorded in
//! `fixtures/reference/debug.safetensors` as `sched.<id>.timesteps`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use sdserve_engine::config::{read_json, SchedulerConfig};
use sdserve_engine::samplers::{self, SamplerId, ScheduleType};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[test]
fn timesteps_equal_diffusers_for_both_fixture_configs() {
    let debug = candle_core::safetensors::load(
        fixtures().join("reference/debug.safetensors"),
        &Device::Cpu,
    )
    .expect("debug tensors load");
    for (model, prefix) in [("tiny-sd1", "sched"), ("tiny-sd2", "sched_sd2")] {
        let config: SchedulerConfig = read_json(
            &fixtures()
                .join("models")
                .join(model)
                .join("scheduler/scheduler_config.json"),
        )
        .unwrap();
        // The samplers `make_fixtures.py` recorded (the others are in
        // `sampler-schedules.safetensors`, checked below).
        let recorded = [
            ("ddim", SamplerId::Ddim, ScheduleType::Automatic),
            ("euler", SamplerId::Euler, ScheduleType::Automatic),
            (
                "euler_ancestral",
                SamplerId::EulerAncestral,
                ScheduleType::Automatic,
            ),
            ("dpmpp_2m", SamplerId::DpmPp2m, ScheduleType::Automatic),
            ("dpmpp_2m_karras", SamplerId::DpmPp2m, ScheduleType::Karras),
        ];
        for (name, id, schedule) in recorded {
            let sampler = samplers::build(id, schedule, &config, 5).unwrap();
            let key = format!("{prefix}.{name}.timesteps");
            let theirs: Vec<f64> = debug[&key].to_vec1::<f64>().unwrap();
            assert_eq!(sampler.timesteps(), theirs.as_slice(), "{model} {id}");
            // The first sigma of this schedule is sigma_max of the training schedule.
            let expected_init = match id {
                SamplerId::Euler | SamplerId::EulerAncestral => debug
                    [&format!("{prefix}.{name}.sigmas")]
                    .to_vec1::<f64>()
                    .unwrap()[0],
                _ => 1.0,
            };
            // float32 schedules: torch's vectorised linspace/cumprod round a
            // few ulps differently, so compare to a relative 1e-6.
            let ours = sampler.init_noise_sigma();
            assert!(
                (ours - expected_init).abs() <= 1e-6 * expected_init,
                "{model} {id}: init_noise_sigma {ours} vs diffusers {expected_init}"
            );
        }
    }
}
