//! A reference model of the money path, in plain Rust: no database, no
//! async, no product code. Given a case (a few shoppers, browsers, two
//! merchants, some orders) and a sequence of events, it says what every
//! shopper's wallet and every purchase's status must be, from the product
//! specification and the table "a reward's state from its facts" in
//! docs/ARCHITECTURE.md.
//!
//! What it follows:
//! - identity: groups of nodes (browsers, users, orders confirmed by the
//!   SDK) with their clicks; merges keep everything of both groups; a group
//!   holds at most one user (a second user identifying a browser takes the
//!   browser alone); a purchase token proves the browser, so a purchase
//!   follows the browser that confirmed it with the right token;
//! - attribution: the purchase's group must hold a user and a click on the
//!   merchant made before the purchase arrived (else it waits, or ends
//!   `unattributed` when the user is known but no click is); the latest click
//!   wins, and a merge that brings a later click to a pending reward
//!   re-attributes it (same amount, same facts);
//! - a reward's state from its facts, whatever order they came in: the
//!   merchant's reversal, the admin's rejection, a flag without review, the
//!   merchant's confirmation or the end of the hold period, pending;
//! - the ledger of each shopper: pending, available, reserved, paid out and
//!   receivable (what the shopper owes), with the one rule
//!   for credits into available (the receivable is settled first);
//! - payouts: a request reserves (refused below the minimum or above what is
//!   available), the provider's answer pays it out or releases it.
//!
//! Faults of the job system (a job run twice, lost, a worker killed or
//! stopped, Redis losing a queue) change nothing here: money converges from
//! the recorded facts whatever happens to the jobs.

use std::collections::HashMap;

/// Shoppers (registered users), browsers (anon ids) and merchants per case.
pub const SHOPPERS: usize = 3;
pub const BROWSERS: usize = 3;
pub const MERCHANTS: usize = 2;
/// Every offer pays this rate, with no caps.
pub const RATE_BPS: i64 = 1_000;
/// The smallest payout the product accepts (its configured minimum).
pub const MIN_PAYOUT: i64 = 100;

/// An order a merchant may report. Amounts stay within a factor of five of
/// each other and a shopper has at most four others in any hour, so the only
/// fraud rule that decides a flag is the hour of the purchase: `odd_hour`
/// orders are flagged for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub merchant: usize,
    pub amount_minor: i64,
    pub odd_hour: bool,
}

impl Order {
    pub fn cashback(&self) -> i64 {
        self.amount_minor * RATE_BPS / 10_000
    }
}

/// What the provider answers for a payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Paid at once.
    Paid,
    /// Refused for good (the account is closed).
    Refused,
    /// Took it but answered too late; asked, it says paid.
    TimeoutThenPaid,
    /// Answered too late; asked, it says failed.
    TimeoutThenFailed,
}

impl Provider {
    pub fn pays(self) -> bool {
        matches!(self, Provider::Paid | Provider::TimeoutThenPaid)
    }
}

/// How much a payout request asks for, relative to what is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Half,
    All,
    /// One more than available: refused.
    MoreThanAvailable,
}

impl Ask {
    pub fn amount(self, available: i64) -> i64 {
        match self {
            Ask::Half => available / 2,
            Ask::All => available,
            Ask::MoreThanAvailable => available + 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A browser clicks a merchant's referral link.
    Click { browser: usize, merchant: usize },
    /// A shopper signs in on a browser.
    Identify { shopper: usize, browser: usize },
    /// The merchant reports the order (with its purchase token); `replay`
    /// sends the last report again under the same idempotency key.
    Webhook { order: usize, replay: bool },
    /// The checkout page confirms the order from a browser, with the
    /// order's token or a wrong one.
    Sdk {
        order: usize,
        browser: usize,
        right_token: bool,
    },
    /// The merchant confirms or reverses the order.
    Decide { order: usize, reverse: bool },
    /// An admin approves or rejects the order's flagged reward.
    Review { order: usize, approve: bool },
    /// The hold period of every reward that exists now ends.
    HoldElapsed,
    /// A shopper asks for a payout.
    Payout { shopper: usize, ask: Ask },
    /// The provider answers every payout waiting for it.
    ProviderAnswers(Provider),
}

/// What goes wrong with the jobs the step enqueued, before they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every job runs twice.
    RunTwice,
    /// Redis loses the jobs after the relay pushed them.
    Lost,
    /// A worker takes the jobs and is killed before it runs them.
    Killed,
    /// A worker takes the jobs and is stopped gracefully: it hands them back.
    Stopped,
    /// Redis loses every queue's contents.
    RedisFlushed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub event: Event,
    pub fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub orders: Vec<Order>,
    pub steps: Vec<Step>,
}

/// A shopper's wallet, as `GET /v1/me/wallet` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wallet {
    pub pending: i64,
    pub available: i64,
    pub reserved: i64,
    pub paid_out: i64,
    /// What the shopper owes (after a reversal of cashback already spent),
    /// zero or more.
    pub receivable: i64,
}

impl Wallet {
    /// The credit rule for available: the receivable first, the rest.
    fn credit_available(&mut self, amount: i64) {
        let settle = amount.min(self.receivable);
        self.receivable -= settle;
        self.available += amount - settle;
    }
}

/// A purchase's status, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Received,
    Attributed,
    Unattributed,
    Flagged,
    Confirmed,
    Reversed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Attributed => "attributed",
            Status::Unattributed => "unattributed",
            Status::Flagged => "flagged",
            Status::Confirmed => "confirmed",
            Status::Reversed => "reversed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewardState {
    Flagged,
    Pending,
    Confirmed,
    Reversed,
}

#[derive(Debug, Clone, Copy)]
struct Reward {
    shopper: usize,
    amount: i64,
    state: RewardState,
    flagged: bool,
    /// The click it was attributed to.
    click: usize,
    hold_over: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Confirmed,
    Reversed,
}

#[derive(Debug, Clone)]
struct Purchase {
    group: Option<usize>,
    /// When it arrived (the model's clock: the step index).
    at: usize,
    processed: bool,
    unattributed: bool,
    decision: Option<Decision>,
    /// The admin's review of the purchase's flagged reward.
    review: Option<bool>,
    reward: Option<Reward>,
}

#[derive(Debug, Clone, Copy)]
struct Click {
    group: usize,
    merchant: usize,
    at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Payout {
    shopper: usize,
    amount: i64,
    done: bool,
}

/// The model's state after some events.
#[derive(Debug, Clone)]
pub struct Model {
    orders: Vec<Order>,
    /// Union-find over identity groups: `parent[g] == g` for a live group.
    parent: Vec<usize>,
    browser: [Option<usize>; BROWSERS],
    user: [Option<usize>; SHOPPERS],
    /// Orders the SDK confirmed before the webhook: the node's group and
    /// whether its (first) token was the right one.
    pending_order: HashMap<usize, (usize, bool)>,
    clicks: Vec<Click>,
    purchases: HashMap<usize, Purchase>,
    wallets: [Wallet; SHOPPERS],
    payouts: Vec<Payout>,
    clock: usize,
}

/// The outcome of comparing: per shopper, per order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub wallets: Vec<Wallet>,
    /// `None`: the merchant never reported the order.
    pub statuses: Vec<Option<Status>>,
}

impl Model {
    pub fn new(orders: &[Order]) -> Self {
        Self {
            orders: orders.to_vec(),
            parent: Vec::new(),
            browser: [None; BROWSERS],
            user: [None; SHOPPERS],
            pending_order: HashMap::new(),
            clicks: Vec::new(),
            purchases: HashMap::new(),
            wallets: [Wallet::default(); SHOPPERS],
            payouts: Vec::new(),
            clock: 0,
        }
    }

    /// Runs a whole case, then what the system does when left to settle:
    /// every payout still waiting is answered `Paid`.
    pub fn run(case: &Case) -> Outcome {
        let mut m = Model::new(&case.orders);
        for s in &case.steps {
            m.apply(&s.event);
        }
        m.apply(&Event::ProviderAnswers(Provider::Paid));
        m.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        Outcome {
            wallets: self.wallets.to_vec(),
            statuses: (0..self.orders.len()).map(|o| self.status(o)).collect(),
        }
    }

    pub fn wallet(&self, shopper: usize) -> Wallet {
        self.wallets[shopper]
    }

    pub fn status(&self, order: usize) -> Option<Status> {
        let p = self.purchases.get(&order)?;
        Some(match p.reward.map(|r| r.state) {
            None if p.unattributed => Status::Unattributed,
            None => Status::Received,
            Some(RewardState::Flagged) => Status::Flagged,
            Some(RewardState::Pending) => Status::Attributed,
            Some(RewardState::Confirmed) => Status::Confirmed,
            Some(RewardState::Reversed) => Status::Reversed,
        })
    }

    /// Whether the order has a flagged reward an admin may still review.
    pub fn reviewable(&self, order: usize) -> bool {
        self.purchases
            .get(&order)
            .and_then(|p| p.reward.map(|r| r.flagged && p.review.is_none()))
            .unwrap_or(false)
    }

    /// Whether the merchant's decision is accepted: the order must have been
    /// reported, and a reversed order is not confirmed again.
    pub fn accepts_decision(&self, order: usize, reverse: bool) -> bool {
        self.purchases.get(&order).is_some_and(|p| {
            reverse
                || !(p.decision == Some(Decision::Reversed)
                    || p.reward.map(|r| r.state) == Some(RewardState::Reversed))
        })
    }

    /// Payouts asked for and not yet answered by the provider.
    pub fn waiting_payouts(&self) -> usize {
        self.payouts.iter().filter(|p| !p.done).count()
    }

    // --- identity -------------------------------------------------------

    fn new_group(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.parent.len() - 1
    }

    fn find(&self, mut g: usize) -> usize {
        while self.parent[g] != g {
            g = self.parent[g];
        }
        g
    }

    fn browser_group(&mut self, b: usize) -> usize {
        match self.browser[b] {
            Some(g) => self.find(g),
            None => {
                let g = self.new_group();
                self.browser[b] = Some(g);
                g
            }
        }
    }

    fn user_group(&mut self, s: usize) -> usize {
        match self.user[s] {
            Some(g) => self.find(g),
            None => {
                let g = self.new_group();
                self.user[s] = Some(g);
                g
            }
        }
    }

    fn user_of(&self, g: usize) -> Option<usize> {
        let g = self.find(g);
        (0..SHOPPERS).find(|&s| self.user[s].is_some_and(|u| self.find(u) == g))
    }

    /// Merges two groups unless each holds a user; returns the merged group,
    /// or `None` when they were left apart.
    fn merge(&mut self, a: usize, b: usize) -> Option<usize> {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return Some(a);
        }
        if self.user_of(a).is_some() && self.user_of(b).is_some() {
            return None;
        }
        self.parent[b] = a;
        Some(a)
    }

    // --- events ---------------------------------------------------------

    pub fn apply(&mut self, e: &Event) {
        self.clock += 1;
        match *e {
            Event::Click { browser, merchant } => {
                let g = self.browser_group(browser);
                self.clicks.push(Click {
                    group: g,
                    merchant,
                    at: self.clock,
                });
            }
            Event::Identify { shopper, browser } => {
                let a = self.browser_group(browser);
                let u = self.user_group(shopper);
                if a == u {
                    return;
                }
                if self.user_of(a).is_none() {
                    let g = self.merge(u, a).expect("one side has no user");
                    self.wake(g);
                } else {
                    // The browser belongs to whoever signed in on it last; the
                    // other user keeps their clicks and purchases.
                    self.browser[browser] = Some(u);
                }
            }
            Event::Webhook { order, .. } => {
                // Sent again (replayed, or under a new key: refused as a
                // duplicate order), it changes nothing.
                if self.purchases.contains_key(&order) {
                    return;
                }
                let group = match self.pending_order.get(&order) {
                    Some(&(g, true)) => Some(self.find(g)),
                    _ => None,
                };
                self.purchases.insert(
                    order,
                    Purchase {
                        group,
                        at: self.clock,
                        processed: false,
                        unattributed: false,
                        decision: None,
                        review: None,
                        reward: None,
                    },
                );
                self.attribute(order);
            }
            Event::Sdk {
                order,
                browser,
                right_token,
            } => {
                let a = self.browser_group(browser);
                if let Some(p) = self.purchases.get(&order) {
                    if !right_token {
                        return;
                    }
                    let target = match p.group {
                        Some(g) => self.merge(g, a).unwrap_or(a),
                        None => a,
                    };
                    let target = self.find(target);
                    self.purchases.get_mut(&order).expect("exists").group = Some(target);
                    self.wake(target);
                } else {
                    match self.pending_order.get(&order).copied() {
                        // Confirmed again with the first token: the browser
                        // joins the order's group (a wrong token is never
                        // the same twice).
                        Some((g, first_right)) => {
                            if first_right && right_token {
                                self.merge(g, a);
                            }
                        }
                        None => {
                            self.pending_order.insert(order, (a, right_token));
                        }
                    }
                }
            }
            Event::Decide { order, reverse } => {
                if !self.accepts_decision(order, reverse) {
                    return;
                }
                let p = self.purchases.get_mut(&order).expect("accepted");
                p.decision = Some(if reverse {
                    Decision::Reversed
                } else {
                    Decision::Confirmed
                });
                self.settle(order);
            }
            Event::Review { order, approve } => {
                if !self.reviewable(order) {
                    return;
                }
                self.purchases.get_mut(&order).expect("exists").review = Some(approve);
                self.settle(order);
            }
            Event::HoldElapsed => {
                let orders: Vec<usize> = self.purchases.keys().copied().collect();
                for o in orders {
                    if let Some(r) = self.purchases.get_mut(&o).and_then(|p| p.reward.as_mut()) {
                        r.hold_over = true;
                    }
                    self.settle(o);
                }
            }
            Event::Payout { shopper, ask } => {
                let w = &mut self.wallets[shopper];
                let amount = ask.amount(w.available);
                if amount < MIN_PAYOUT || amount > w.available {
                    return;
                }
                w.available -= amount;
                w.reserved += amount;
                self.payouts.push(Payout {
                    shopper,
                    amount,
                    done: false,
                });
            }
            Event::ProviderAnswers(answer) => {
                for p in self.payouts.iter_mut().filter(|p| !p.done) {
                    p.done = true;
                    let w = &mut self.wallets[p.shopper];
                    w.reserved -= p.amount;
                    if answer.pays() {
                        w.paid_out += p.amount;
                    } else {
                        w.credit_available(p.amount);
                    }
                }
            }
        }
    }

    /// The latest click of `group` on the order's merchant made before the
    /// purchase arrived.
    fn latest_click(&self, order: usize, group: usize) -> Option<usize> {
        let p = &self.purchases[&order];
        let merchant = self.orders[order].merchant;
        let g = self.find(group);
        self.clicks
            .iter()
            .enumerate()
            .filter(|(_, c)| self.find(c.group) == g && c.merchant == merchant && c.at <= p.at)
            .map(|(i, _)| i)
            .next_back()
    }

    /// Purchases of the group that wait for a user are attributed; pending
    /// rewards move to a later click the merge brought.
    fn wake(&mut self, group: usize) {
        let g = self.find(group);
        let mut orders: Vec<usize> = self
            .purchases
            .iter()
            .filter(|(_, p)| p.group.is_some_and(|pg| self.find(pg) == g))
            .map(|(o, _)| *o)
            .collect();
        orders.sort_unstable();
        for o in orders {
            let p = &self.purchases[&o];
            if !p.processed {
                self.attribute(o);
            } else if let Some(r) = p.reward
                && r.state == RewardState::Pending
                && self.latest_click(o, g).is_some_and(|c| c != r.click)
            {
                // Re-attribution: the old reward's money goes back and the
                // purchase is attributed again (to the group's user now);
                // the purchase's facts stay.
                self.wallets[r.shopper].pending -= r.amount;
                let p = self.purchases.get_mut(&o).expect("exists");
                p.reward = None;
                p.processed = false;
                self.attribute(o);
            }
        }
    }

    fn attribute(&mut self, order: usize) {
        let p = &self.purchases[&order];
        if p.processed {
            return;
        }
        let Some(group) = p.group else { return };
        let Some(shopper) = self.user_of(group) else {
            return; // waits for a user
        };
        let Some(click) = self.latest_click(order, group) else {
            let p = self.purchases.get_mut(&order).expect("exists");
            p.processed = true;
            p.unattributed = true;
            return;
        };
        self.reward(order, shopper, click);
    }

    fn reward(&mut self, order: usize, shopper: usize, click: usize) {
        let o = self.orders[order];
        let flagged = o.odd_hour;
        let amount = o.cashback();
        if !flagged {
            self.wallets[shopper].pending += amount;
        }
        let p = self.purchases.get_mut(&order).expect("exists");
        p.processed = true;
        p.reward = Some(Reward {
            shopper,
            amount,
            state: if flagged {
                RewardState::Flagged
            } else {
                RewardState::Pending
            },
            flagged,
            click,
            hold_over: false,
        });
        self.settle(order);
    }

    /// The reward's state from its facts (docs/ARCHITECTURE.md), reached by
    /// moving forward only.
    fn target(p: &Purchase, r: &Reward) -> RewardState {
        if p.decision == Some(Decision::Reversed) || p.review == Some(false) {
            RewardState::Reversed
        } else if r.flagged && p.review.is_none() {
            RewardState::Flagged
        } else if p.decision == Some(Decision::Confirmed) || r.hold_over {
            RewardState::Confirmed
        } else {
            RewardState::Pending
        }
    }

    fn settle(&mut self, order: usize) {
        let p = &self.purchases[&order];
        let Some(mut r) = p.reward else { return };
        let to = Self::target(p, &r);
        let w = &mut self.wallets[r.shopper];
        use RewardState::*;
        loop {
            r.state = match (r.state, to) {
                (Flagged, Pending | Confirmed) => {
                    w.pending += r.amount;
                    Pending
                }
                (Pending, Confirmed) => {
                    w.pending -= r.amount;
                    w.credit_available(r.amount);
                    Confirmed
                }
                (Pending, Reversed) => {
                    w.pending -= r.amount;
                    Reversed
                }
                (Flagged, Reversed) => Reversed,
                (Confirmed, Reversed) => {
                    let take = r.amount.min(w.available);
                    w.available -= take;
                    w.receivable += r.amount - take;
                    Reversed
                }
                _ => break,
            };
        }
        self.purchases.get_mut(&order).expect("exists").reward = Some(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(event: Event) -> Step {
        Step {
            event,
            fault: Fault::None,
        }
    }

    fn order(odd_hour: bool) -> Order {
        Order {
            merchant: 0,
            amount_minor: 2_000,
            odd_hour,
        }
    }

    #[test]
    fn a_click_an_identify_and_a_confirmed_purchase_become_available() {
        let case = Case {
            orders: vec![order(false)],
            steps: vec![
                step(Event::Identify {
                    shopper: 0,
                    browser: 0,
                }),
                step(Event::Click {
                    browser: 0,
                    merchant: 0,
                }),
                step(Event::Sdk {
                    order: 0,
                    browser: 0,
                    right_token: true,
                }),
                step(Event::Webhook {
                    order: 0,
                    replay: false,
                }),
                step(Event::Decide {
                    order: 0,
                    reverse: false,
                }),
            ],
        };
        let out = Model::run(&case);
        assert_eq!(out.wallets[0].available, 200);
        assert_eq!(out.statuses[0], Some(Status::Confirmed));
    }

    #[test]
    fn a_reversal_after_a_payout_reservation_is_owed_and_a_failed_payout_settles_it_first() {
        let mut m = Model::new(&[order(false)]);
        for e in [
            Event::Identify {
                shopper: 0,
                browser: 0,
            },
            Event::Click {
                browser: 0,
                merchant: 0,
            },
            Event::Sdk {
                order: 0,
                browser: 0,
                right_token: true,
            },
            Event::Webhook {
                order: 0,
                replay: false,
            },
            Event::HoldElapsed,
            Event::Payout {
                shopper: 0,
                ask: Ask::All,
            },
            Event::Decide {
                order: 0,
                reverse: true,
            },
        ] {
            m.apply(&e);
        }
        assert_eq!(
            m.wallet(0),
            Wallet {
                reserved: 200,
                receivable: 200,
                ..Default::default()
            }
        );
        m.apply(&Event::ProviderAnswers(Provider::Refused));
        assert_eq!(m.wallet(0), Wallet::default(), "the release pays the debt");
    }

    #[test]
    fn a_reversal_before_attribution_wins_over_an_approval() {
        let mut m = Model::new(&[order(true)]);
        for e in [
            Event::Identify {
                shopper: 0,
                browser: 0,
            },
            Event::Click {
                browser: 0,
                merchant: 0,
            },
            Event::Sdk {
                order: 0,
                browser: 0,
                right_token: false,
            },
            Event::Webhook {
                order: 0,
                replay: false,
            },
        ] {
            m.apply(&e);
        }
        assert_eq!(
            m.status(0),
            Some(Status::Received),
            "a wrong token links nothing"
        );
        m.apply(&Event::Decide {
            order: 0,
            reverse: true,
        });
        m.apply(&Event::Sdk {
            order: 0,
            browser: 0,
            right_token: true,
        });
        assert_eq!(m.status(0), Some(Status::Reversed));
        m.apply(&Event::Review {
            order: 0,
            approve: true,
        });
        m.apply(&Event::HoldElapsed);
        assert_eq!(m.status(0), Some(Status::Reversed));
        assert_eq!(m.wallet(0), Wallet::default());
    }

    #[test]
    fn a_second_user_on_a_browser_takes_the_browser_alone() {
        let mut m = Model::new(&[order(false)]);
        for e in [
            Event::Identify {
                shopper: 0,
                browser: 0,
            },
            Event::Click {
                browser: 0,
                merchant: 0,
            },
            Event::Identify {
                shopper: 1,
                browser: 0,
            },
            Event::Click {
                browser: 0,
                merchant: 0,
            },
            Event::Sdk {
                order: 0,
                browser: 0,
                right_token: true,
            },
            Event::Webhook {
                order: 0,
                replay: false,
            },
        ] {
            m.apply(&e);
        }
        assert_eq!(m.wallet(1).pending, 200);
        assert_eq!(m.wallet(0).pending, 0);
    }
}
