//! Names clients give their jobs: A1111 1.8+'s `force_task_id`, the id a
//! client picks (`task(abc123)`) to follow its request through
//! `/internal/progress` while the synchronous call is still waiting. Names are
//! the client's, not the server's: each belongs to the caller that gave it (so
//! with keys a caller can follow only its own), a newer job under the same
//! name replaces the older, and only the newest [`MAX_TASK_NAMES`] are kept,
//! so a client cannot grow the map without bound.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::id::JobId;
use super::queue::ClientId;

/// How many names are remembered; older ones are forgotten first (their jobs
/// are unaffected and keep their ids).
pub const MAX_TASK_NAMES: usize = 4096;

/// Longest accepted name, in characters (A1111's are `task(` + 15 characters + `)`).
pub const MAX_TASK_NAME_CHARS: usize = 256;

/// The names given by clients to their jobs, oldest first.
#[derive(Default)]
pub struct TaskNames {
    names: Mutex<VecDeque<Named>>,
}

struct Named {
    owner: ClientId,
    name: String,
    job: JobId,
}

impl TaskNames {
    /// Remembers that `owner` calls `job` by `name` (replacing an older job
    /// of that owner under the same name).
    pub fn insert(&self, owner: &ClientId, name: &str, job: JobId) {
        let mut names = self.lock();
        names.retain(|n| !(n.owner == *owner && n.name == name));
        if names.len() >= MAX_TASK_NAMES {
            names.pop_front();
        }
        names.push_back(Named {
            owner: owner.clone(),
            name: name.to_string(),
            job,
        });
    }

    /// The newest job named `name` by an owner `visible` accepts.
    pub fn find(&self, name: &str, visible: impl Fn(&ClientId) -> bool) -> Option<JobId> {
        self.lock()
            .iter()
            .rev()
            .find(|n| n.name == name && visible(&n.owner))
            .map(|n| n.job)
    }

    /// Every (name, job) whose owner `visible` accepts, oldest first.
    pub fn visible(&self, visible: impl Fn(&ClientId) -> bool) -> Vec<(String, JobId)> {
        self.lock()
            .iter()
            .filter(|n| visible(&n.owner))
            .map(|n| (n.name.clone(), n.job))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Named>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_their_owner_and_stay_bounded() {
        let names = TaskNames::default();
        let (ann, bob) = (ClientId::new("ann"), ClientId::new("bob"));
        let (a1, a2, b1) = (JobId::new(), JobId::new(), JobId::new());
        names.insert(&ann, "task(x)", a1);
        names.insert(&bob, "task(x)", b1);
        assert_eq!(names.find("task(x)", |o| *o == ann), Some(a1));
        assert_eq!(names.find("task(x)", |o| *o == bob), Some(b1));
        // Unrestricted callers see the newest of any owner.
        assert_eq!(names.find("task(x)", |_| true), Some(b1));
        assert_eq!(names.find("task(y)", |_| true), None);
        // A newer job under the same name replaces the older one.
        names.insert(&ann, "task(x)", a2);
        assert_eq!(names.find("task(x)", |o| *o == ann), Some(a2));
        assert_eq!(names.visible(|o| *o == ann), vec![("task(x)".into(), a2)]);
        for i in 0..MAX_TASK_NAMES {
            names.insert(&ann, &format!("n{i}"), JobId::new());
        }
        assert_eq!(names.visible(|_| true).len(), MAX_TASK_NAMES);
        assert_eq!(names.find("task(x)", |_| true), None, "oldest forgotten");
        assert!(names
            .find(&format!("n{}", MAX_TASK_NAMES - 1), |_| true)
            .is_some());
    }
}
