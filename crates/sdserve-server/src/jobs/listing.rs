//! A caller's recent jobs, newest first (the native `GET /api/v1/jobs`): the
//! jobs still in memory (queued, running, finished within `finished_ttl`) and
//! the records on disk of older ones, read newest file first and only as many
//! as the listing needs. Results that live only for their response
//! (`Keep::ResponseOnly`) and deleted jobs are never listed.

use std::collections::HashSet;

use super::id::JobId;
use super::job::JobSnapshot;
use super::manager::Jobs;
use super::queue::ClientId;
use super::record::Keep;

impl Jobs {
    /// The newest `limit` listable jobs whose owner `visible` accepts (blocking:
    /// it may read records from disk).
    pub fn recent(&self, visible: impl Fn(&ClientId) -> bool, limit: usize) -> Vec<JobSnapshot> {
        let mut found: Vec<JobSnapshot> = self
            .list()
            .into_iter()
            .filter(|e| !e.is_deleted() && e.keep == Keep::Stored && visible(&e.client))
            .map(|e| e.snapshot())
            .collect();
        let in_memory: HashSet<JobId> = found.iter().map(|s| s.id).collect();
        let mut from_disk = 0;
        for id in self.store().record_ids_newest_first() {
            if from_disk >= limit {
                break;
            }
            if in_memory.contains(&id) {
                continue;
            }
            let Some(record) = self.store().read_record_blocking(id) else {
                continue;
            };
            if record.keep == Keep::Stored && visible(&record.client_id()) {
                found.push(record.snapshot);
                from_disk += 1;
            }
        }
        found.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
        found.truncate(limit);
        found
    }
}
