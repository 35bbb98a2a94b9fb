//! A circuit breaker around calls to an outside HTTP service (the payout
//! provider, the fraud explainer), on the `failsafe` crate: consecutive
//! failures open it, calls fail fast while it is open, and after an
//! exponentially growing pause calls are let through as probes; one success
//! closes it. Its state is the `<name>_circuit_state` gauge (0 closed,
//! 1 half-open, 2 open) and the calls it refused count in
//! `<name>_circuit_rejections_total`. Per process: each replica learns on its
//! own that the service is down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use failsafe::{
    Config as BreakerConfig, StateMachine, backoff, failure_policy, futures::CircuitBreaker as _,
};

/// The circuit breaker's state as a number, for the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug, Clone)]
struct Instrument {
    state: Arc<AtomicU8>,
    /// The metric prefix (`payout_provider`) and what is logged (`payout provider`).
    name: &'static str,
    what: &'static str,
    /// What waits while it is open, for the log.
    waiting: &'static str,
}

impl Instrument {
    fn set(&self, s: CircuitState) {
        let before = self.state.swap(s as u8, Ordering::SeqCst);
        metrics::gauge!(format!("{}_circuit_state", self.name)).set(s as u8 as f64);
        if before != s as u8 {
            let what = self.what;
            match s {
                CircuitState::Open => tracing::error!(
                    "{what} circuit breaker opened; {} until it recovers",
                    self.waiting
                ),
                CircuitState::HalfOpen => {
                    tracing::warn!("{what} circuit breaker half-open; probing")
                }
                CircuitState::Closed => {
                    tracing::info!("{what} circuit breaker closed; the service answers")
                }
            }
        }
    }
}

impl failsafe::Instrument for Instrument {
    fn on_call_rejected(&self) {
        metrics::counter!(format!("{}_circuit_rejections_total", self.name)).increment(1);
    }
    fn on_open(&self) {
        self.set(CircuitState::Open);
    }
    fn on_half_open(&self) {
        self.set(CircuitState::HalfOpen);
    }
    fn on_closed(&self) {
        self.set(CircuitState::Closed);
    }
}

type Machine = StateMachine<failure_policy::ConsecutiveFailures<backoff::Exponential>, Instrument>;

/// What a call through the breaker gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused<E> {
    /// The call ran and failed.
    Inner(E),
    /// The breaker is open; nothing was sent.
    Open,
}

/// A circuit breaker around one service's calls.
#[derive(Clone)]
pub struct Breaker {
    machine: Machine,
    instrument: Instrument,
}

/// Who a breaker guards: its metric prefix, its name in logs, and what waits
/// while it is open.
#[derive(Debug, Clone, Copy)]
pub struct Guarded {
    pub name: &'static str,
    pub what: &'static str,
    pub waiting: &'static str,
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `open`, doubling up to `open_max`.
    pub fn new(guarded: Guarded, failures: u32, open: Duration, open_max: Duration) -> Self {
        let instrument = Instrument {
            state: Arc::default(),
            name: guarded.name,
            what: guarded.what,
            waiting: guarded.waiting,
        };
        instrument.set(CircuitState::Closed);
        let machine = BreakerConfig::new()
            .failure_policy(failure_policy::consecutive_failures(
                failures,
                backoff::exponential(open, open_max.max(open)),
            ))
            .instrument(instrument.clone())
            .build();
        Self {
            machine,
            instrument,
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.instrument.state.load(Ordering::SeqCst) {
            0 => CircuitState::Closed,
            1 => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }

    /// Runs `call` unless the breaker is open; errors for which `is_outage`
    /// holds count as failures, others (a refusal on the merits) do not.
    pub async fn call<T, E, F>(&self, is_outage: fn(&E) -> bool, call: F) -> Result<T, Refused<E>>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        match self.machine.call_with(is_outage, call).await {
            Ok(v) => Ok(v),
            Err(failsafe::Error::Inner(e)) => Err(Refused::Inner(e)),
            Err(failsafe::Error::Rejected) => Err(Refused::Open),
        }
    }
}
