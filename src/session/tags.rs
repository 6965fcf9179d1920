//! The delivery tags a channel has handed out and not yet settled (acked,
//! nacked or rejected), so that acknowledging a tag twice, one never
//! delivered, or one from another channel is caught locally with a typed
//! error instead of the broker closing the channel with 406.
//!
//! Tags arrive in increasing order; settling one is a binary search, and
//! settled tags at the front are dropped, so memory stays within the
//! channel's prefetch.

use std::collections::VecDeque;

/// Unsettled delivery tags of one channel.
#[derive(Debug, Default)]
pub(crate) struct UnsettledTags {
    /// (tag, settled), tags increasing; the front is never settled.
    tags: VecDeque<(u64, bool)>,
}

/// Why a tag could not be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownTag;

impl UnsettledTags {
    /// Records a delivery that must be settled.
    pub(crate) fn delivered(&mut self, tag: u64) {
        match self.tags.back() {
            Some(&(last, _)) if last >= tag => {
                // Tags only grow on a channel; a lower one means the broker
                // restarted numbering (after basic.recover): start over.
                self.tags.clear();
            }
            _ => {}
        }
        self.tags.push_back((tag, false));
    }

    /// Settles `tag`, or with `multiple` every tag up to it (`0` with
    /// `multiple`: all of them), as the broker would. `Ok(true)` when no
    /// unsettled tag was below it: then settling it alone and settling
    /// everything up to it are the same thing.
    pub(crate) fn settle(&mut self, tag: u64, multiple: bool) -> Result<bool, UnknownTag> {
        if multiple && tag == 0 {
            self.tags.clear();
            return Ok(true);
        }
        let index = self
            .tags
            .binary_search_by_key(&tag, |&(t, _)| t)
            .map_err(|_| UnknownTag)?;
        if self.tags[index].1 {
            return Err(UnknownTag);
        }
        // The front is never settled, so index 0 means nothing unsettled
        // below; a multiple settle leaves nothing below either way.
        let lowest = index == 0 || multiple;
        if multiple {
            self.tags.drain(..=index);
        } else {
            self.tags[index].1 = true;
        }
        while self.tags.front().is_some_and(|&(_, settled)| settled) {
            self.tags.pop_front();
        }
        Ok(lowest)
    }

    /// Forgets every tag (basic.recover: the broker redelivers with new ones).
    pub(crate) fn clear(&mut self) {
        self.tags.clear();
    }

    /// How many tags are unsettled.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tags.iter().filter(|(_, settled)| !settled).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(tags: impl IntoIterator<Item = u64>) -> UnsettledTags {
        let mut set = UnsettledTags::default();
        for t in tags {
            set.delivered(t);
        }
        set
    }

    #[test]
    fn a_tag_settles_once() {
        let mut set = delivered(1..=3);
        assert_eq!(
            set.settle(2, false),
            Ok(false),
            "1 is still unsettled below it"
        );
        assert_eq!(set.settle(2, false), Err(UnknownTag));
        assert_eq!(set.settle(9, false), Err(UnknownTag), "never delivered");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn multiple_settles_everything_up_to_a_tag_that_must_itself_be_unsettled() {
        let mut set = delivered(1..=10);
        assert_eq!(set.settle(4, true), Ok(true));
        assert_eq!(set.len(), 6);
        assert_eq!(set.settle(3, true), Err(UnknownTag));
        assert_eq!(set.settle(5, false), Ok(true), "the lowest unsettled");
        assert_eq!(set.settle(7, false), Ok(false));
        assert_eq!(set.settle(8, true), Ok(true));
        assert_eq!(set.len(), 2);
        assert_eq!(set.settle(0, true), Ok(true), "0 with multiple settles all");
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn memory_stays_bounded_by_what_is_unsettled() {
        let mut set = UnsettledTags::default();
        for t in 1..=100_000 {
            set.delivered(t);
            if t > 10 {
                set.settle(t - 10, false).unwrap();
            }
        }
        assert!(set.tags.len() <= 11);
    }
}
