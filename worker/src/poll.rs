//! When an idle worker asks Redis for due jobs.
//!
//! apalis-redis fetches whenever the worker task is woken; its stock interval
//! strategy re-arms a timer without polling it, so a wake-up can be lost and
//! an idle worker then waits for the next heartbeat. This strategy is a tokio
//! interval that is always polled until it is pending, so a waker is always
//! registered for the next tick.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::time::{Interval, MissedTickBehavior};

pub struct Ticker(Interval);

impl Ticker {
    pub fn every(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self(interval)
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let mut ticked = false;
        // Drain every elapsed tick: the final Pending registers the waker.
        while self.0.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
