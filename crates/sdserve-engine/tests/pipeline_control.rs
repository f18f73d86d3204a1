//! Progress reporting and cancellation between denoising steps, through the
//! engine's public `Observer`.

use std::path::Path;

use sdserve_engine::{
    Engine, EngineError, GenerateRequest, ModelSource, NoopObserver, Observer, Progress, SamplerId,
};

fn engine() -> Engine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-sd1");
    Engine::load(&ModelSource::Dir(dir)).expect("tiny model loads")
}

fn job(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed: Some(seed),
        steps: 4,
        cfg_scale: 7.0,
        sampler: SamplerId::EulerAncestral,
        schedule_type: Default::default(),
        width: 64,
        height: 64,
        batch_size: 1,
        seed_per_image: false,
        hires: None,
        prompt_syntax: Default::default(),
        clip_skip: 0,
        loras: Vec::new(),
        init: None,
    }
}

/// Records progress; cancels job `cancel` once `after` steps are done.
struct Recorder {
    events: Vec<Progress>,
    cancel: Option<usize>,
    after: usize,
    steps_done: usize,
}

impl Observer for Recorder {
    fn progress(&mut self, progress: Progress) {
        if let Progress::Step { step, .. } = progress {
            self.steps_done = step;
        }
        self.events.push(progress);
    }
    fn is_cancelled(&mut self, index: usize) -> bool {
        self.cancel == Some(index) && self.steps_done >= self.after
    }
}

#[test]
fn progress_is_reported_for_every_step_in_order() {
    let engine = engine();
    let mut recorder = Recorder {
        events: Vec::new(),
        cancel: None,
        after: 0,
        steps_done: 0,
    };
    let output = engine
        .generate(&job("a cat", 1), &mut recorder)
        .expect("generates");
    assert_eq!(output.images.len(), 1);
    let expected: Vec<Progress> = std::iter::once(Progress::Encoded)
        .chain((1..=4).map(|step| Progress::Step { step, total: 4 }))
        .chain(std::iter::once(Progress::Decoded))
        .collect();
    assert_eq!(recorder.events, expected);
    assert!(output.timings.denoising > 0.0 && output.timings.decoding > 0.0);
}

#[test]
fn a_cancelled_job_stops_between_steps_and_the_rest_of_the_batch_finishes() {
    let engine = engine();
    let jobs = [job("a cat", 1), job("a dog", 2), job("a fox", 3)];
    let mut recorder = Recorder {
        events: Vec::new(),
        cancel: Some(1),
        after: 1,
        steps_done: 0,
    };
    let results = engine
        .generate_batch(&jobs, &mut recorder)
        .expect("batch runs");
    assert!(
        matches!(results[1], Err(EngineError::Cancelled)),
        "job 1 is cancelled"
    );
    for i in [0, 2] {
        let batched = results[i].as_ref().expect("other jobs finish");
        let alone = engine.generate(&jobs[i], &mut NoopObserver).expect("solo");
        assert_eq!(
            batched.images[0].rgb, alone.images[0].rgb,
            "job {i} unaffected by the cancel"
        );
    }

    // Every job cancelled before the first step: no denoising step runs at all.
    let mut recorder = Recorder {
        events: Vec::new(),
        cancel: Some(0),
        after: 0,
        steps_done: 0,
    };
    let result = engine.generate(&jobs[0], &mut recorder);
    assert!(matches!(result, Err(EngineError::Cancelled)));
    assert!(
        !recorder
            .events
            .iter()
            .any(|p| matches!(p, Progress::Step { .. })),
        "{:?}",
        recorder.events
    );
}

/// Finishes job `index` early once `after` steps are done (A1111's interrupt).
struct Interrupter {
    index: usize,
    after: usize,
    steps_done: usize,
}

impl Observer for Interrupter {
    fn progress(&mut self, progress: Progress) {
        if let Progress::Step { step, .. } = progress {
            self.steps_done = step;
        }
    }
    fn finish_early(&mut self, index: usize) -> bool {
        index == self.index && self.steps_done >= self.after
    }
}

/// A job finished early still decodes (its half-denoised latents), while the
/// rest of its batch runs to the end unchanged.
#[test]
fn a_job_finished_early_is_decoded_and_the_rest_of_the_batch_is_unchanged() {
    let engine = engine();
    let jobs = [job("a cat", 1), job("a dog", 2)];
    let full = engine.generate_batch(&jobs, &mut NoopObserver).unwrap();
    let mut interrupter = Interrupter {
        index: 0,
        after: 2,
        steps_done: 0,
    };
    let early = engine.generate_batch(&jobs, &mut interrupter).unwrap();
    let image = |r: &Result<sdserve_engine::GenerationOutput, EngineError>| {
        r.as_ref().expect("has images").images[0].rgb.clone()
    };
    assert_ne!(
        image(&early[0]),
        image(&full[0]),
        "stopped after 2 of 4 steps"
    );
    assert_eq!(
        image(&early[1]),
        image(&full[1]),
        "its batch mate ran to the end"
    );
}

/// Collects the live previews.
struct Previews(Vec<sdserve_engine::preview::Preview>);

impl Observer for Previews {
    fn wants_preview(&mut self) -> bool {
        true
    }
    fn preview(&mut self, preview: sdserve_engine::preview::Preview) {
        self.0.push(preview);
    }
}

/// One preview per step at latent resolution, and none unless asked for.
#[test]
fn previews_come_once_per_step_at_latent_size_when_asked() {
    let engine = engine();
    let mut previews = Previews(Vec::new());
    engine.generate(&job("a cat", 1), &mut previews).unwrap();
    assert_eq!(previews.0.len(), 4);
    for p in &previews.0 {
        assert_eq!((p.width, p.height, p.rgb.len()), (8, 8, 8 * 8 * 3));
    }
    assert_ne!(previews.0[0].rgb, previews.0[3].rgb, "the image forms");
}
