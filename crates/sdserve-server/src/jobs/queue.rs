//! The waiting room: a bounded, fair queue of jobs. Each client (API key, user or
//! address) has its own lane; lanes are served round robin, so one client's burst
//! waits behind everyone else's next job instead of in front of it. Taking a batch
//! picks the next job in that order and adds the compatible jobs that follow it.
//!
//! Plain data with no locking or I/O: `jobs::manager` owns one behind its mutex.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// Whose job it is, for fairness: `key#N`, `user:NAME` or the client's IP address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps a client label.
    pub fn new(label: impl Into<Arc<str>>) -> Self {
        Self(label.into())
    }

    /// The label, for logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Round-robin lanes of waiting items, one lane per client.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Lanes in service order; the front lane is served next, then goes to the back.
    lanes: VecDeque<(ClientId, VecDeque<T>)>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            lanes: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Items waiting, all lanes together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends to the client's lane; a new client's lane joins at the back of the rotation.
    pub fn push(&mut self, client: ClientId, item: T) {
        match self.lanes.iter_mut().find(|(c, _)| *c == client) {
            Some((_, lane)) => lane.push_back(item),
            None => self.lanes.push_back((client, VecDeque::from([item]))),
        }
        self.len += 1;
    }

    /// Items in the order they will be served if nothing else arrives:
    /// the first item of every lane, then the second of every lane, and so on.
    pub fn service_order(&self) -> Vec<&T> {
        self.service_slots()
            .into_iter()
            .map(|(li, pos)| &self.lanes[li].1[pos])
            .collect()
    }

    /// `(lane index, position in lane)` of every item, in service order.
    fn service_slots(&self) -> Vec<(usize, usize)> {
        let rounds = self.lanes.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
        let mut out = Vec::with_capacity(self.len);
        for round in 0..rounds {
            for (li, (_, lane)) in self.lanes.iter().enumerate() {
                if round < lane.len() {
                    out.push((li, round));
                }
            }
        }
        out
    }

    /// Removes and returns the first item matching `pred` (a cancelled job).
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<T> {
        for li in 0..self.lanes.len() {
            let lane = &mut self.lanes[li].1;
            if let Some(pos) = lane.iter().position(&mut pred) {
                let item = lane.remove(pos);
                self.len -= 1;
                if self.lanes[li].1.is_empty() {
                    self.lanes.remove(li);
                }
                return item;
            }
        }
        None
    }

    /// The item [`FairQueue::pop_batch`] would take first.
    pub fn peek_next(&self) -> Option<&T> {
        self.lanes.front().and_then(|(_, lane)| lane.front())
    }

    /// Takes the next item in service order plus the compatible items after it,
    /// while the summed `weight` stays within `max_weight` (the first item is
    /// always taken). The first item's lane moves to the back of the rotation.
    pub fn pop_batch(
        &mut self,
        max_weight: usize,
        weight: impl Fn(&T) -> usize,
        compatible: impl Fn(&T, &T) -> bool,
    ) -> Vec<T> {
        let Some((client, mut lane)) = self.lanes.pop_front() else {
            return Vec::new();
        };
        let Some(head) = lane.pop_front() else {
            return Vec::new();
        };
        self.len -= 1;
        if !lane.is_empty() {
            self.lanes.push_back((client, lane));
        }
        let mut total = weight(&head);
        // Choose, in service order, the compatible items that still fit...
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        for (li, pos) in self.service_slots() {
            let item = &self.lanes[li].1[pos];
            let w = weight(item);
            if total + w <= max_weight && compatible(&head, item) {
                total += w;
                chosen.push((li, pos));
            }
        }
        // ...then take them out, back to front within each lane so positions stay valid.
        let mut taken: Vec<((usize, usize), T)> = Vec::with_capacity(chosen.len());
        let mut by_removal = chosen.clone();
        by_removal.sort_unstable_by(|a, b| b.cmp(a));
        for (li, pos) in by_removal {
            if let Some(item) = self.lanes[li].1.remove(pos) {
                self.len -= 1;
                taken.push(((li, pos), item));
            }
        }
        self.lanes.retain(|(_, lane)| !lane.is_empty());
        let mut batch = vec![head];
        for slot in chosen {
            if let Some(i) = taken.iter().position(|(s, _)| *s == slot) {
                batch.push(taken.swap_remove(i).1);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> ClientId {
        ClientId::new(name)
    }

    #[test]
    fn serves_clients_round_robin() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push(c("burst"), format!("a{i}"));
        }
        q.push(c("b"), "b0".to_string());
        q.push(c("c"), "c0".to_string());
        q.push(c("b"), "b1".to_string());
        let order: Vec<_> = q.service_order().into_iter().cloned().collect();
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]);
        let mut served = Vec::new();
        while !q.is_empty() {
            served.extend(q.pop_batch(1, |_| 1, |_, _| true));
        }
        assert_eq!(served, order);
    }

    #[test]
    fn batches_compatible_items_up_to_the_weight() {
        let mut q = FairQueue::default();
        q.push(c("a"), (1, 'x'));
        q.push(c("a"), (2, 'y'));
        q.push(c("b"), (4, 'x'));
        q.push(c("c"), (4, 'x'));
        q.push(c("c"), (1, 'x'));
        let batch = q.pop_batch(6, |i| i.0, |a, b| a.1 == b.1);
        assert_eq!(batch, [(1, 'x'), (4, 'x'), (1, 'x')]);
        assert_eq!(q.len(), 2);
        let order: Vec<_> = q.service_order().into_iter().cloned().collect();
        assert_eq!(order, [(4, 'x'), (2, 'y')]);
    }

    #[test]
    fn an_oversized_head_is_still_taken_alone() {
        let mut q = FairQueue::default();
        q.push(c("a"), 9);
        q.push(c("b"), 1);
        assert_eq!(q.peek_next(), Some(&9));
        assert_eq!(q.pop_batch(4, |i| *i, |_, _| true), [9]);
        assert_eq!(q.pop_batch(4, |i| *i, |_, _| true), [1]);
        assert!(q.pop_batch(4, |i| *i, |_, _| true).is_empty());
    }

    #[test]
    fn removes_by_predicate_and_drops_empty_lanes() {
        let mut q = FairQueue::default();
        q.push(c("a"), 1);
        q.push(c("b"), 2);
        assert_eq!(q.remove_where(|i| *i == 1), Some(1));
        assert_eq!(q.remove_where(|i| *i == 1), None);
        assert_eq!(q.len(), 1);
        q.push(c("a"), 3);
        let order: Vec<_> = q.service_order().into_iter().cloned().collect();
        assert_eq!(order, [2, 3]);
    }
}
