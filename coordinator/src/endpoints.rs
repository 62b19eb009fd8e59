//! The cluster's coordinator endpoints: every `HOST:PORT` agents are told
//! they may reach the coordinator at, so that a coordinator restored onto
//! another address (`coordinator restore`, then `serve` there) is found by
//! agents that were never reconfigured.
//!
//! What agents are told is this coordinator's own address (`advertise`, else
//! where it listens) followed by the endpoints operators added with `ctl
//! coordinator endpoints add`. The added ones live in the store (one record
//! in `meta`), so a backup and the coordinator restored from it carry them;
//! the own address is not stored, it is whatever this process serves on.
//! Each session's welcome carries the list, and a change is pushed to every
//! connected agent as [`SetCoordinatorEndpoints`].

use std::net::SocketAddr;
use std::sync::OnceLock;

use apiary_api::endpoints::{BadEndpoint, CoordinatorEndpoint};
use apiary_api::ops::SetCoordinatorEndpoints;
use futures::StreamExt;
use tracing::{info, warn};

use crate::sessions::{Sessions, call};
use crate::store::{Op, Store, StoreError};

/// How many agents a change is pushed to at once: each call is one small
/// message and an answer, but ten thousand at once would hold as many
/// waiters for nothing.
const PUSH_CONCURRENCY: usize = 256;

/// Why the list could not be shown or changed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error(transparent)]
    Bad(#[from] BadEndpoint),
    #[error(
        "{endpoint} is this coordinator's own address, which agents are always told; it is not \
         in the stored list (serve on another address to stop telling them)"
    )]
    Own { endpoint: CoordinatorEndpoint },
    #[error("{endpoint} is not in the stored list (`ctl coordinator endpoints` lists it)")]
    NotStored { endpoint: CoordinatorEndpoint },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The list as `ctl coordinator endpoints` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// This coordinator's own; `None` when it listens on an unspecified
    /// address and has no `advertise`.
    pub advertise: Option<CoordinatorEndpoint>,
    pub stored: Vec<CoordinatorEndpoint>,
    /// What agents are told: [`told`] of the two.
    pub told: Vec<CoordinatorEndpoint>,
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Change {
    pub listing: Listing,
    /// False: the stored list already was so (it is pushed all the same).
    pub changed: bool,
    /// Connected agents that saved the list.
    pub acknowledged: Vec<String>,
    /// Connected agents that did not, with why.
    pub not_acknowledged: Vec<(String, String)>,
}

/// The coordinator's part: its own address, known once it listens, and
/// one change at a time.
#[derive(Debug, Default)]
pub struct Endpoints {
    advertise: OnceLock<CoordinatorEndpoint>,
    /// Read, change, write and push under one lock: two operators adding at
    /// once would otherwise each write a list without the other's.
    changing: tokio::sync::Mutex<()>,
}

impl Endpoints {
    /// Where agents reach this coordinator (`advertise`, else the bound
    /// address). An unspecified address names no host and is not told.
    pub fn set_advertise(&self, addr: SocketAddr) {
        match CoordinatorEndpoint::from_socket_addr(addr) {
            Ok(e) => {
                let _ = self.advertise.set(e);
            }
            Err(e) => warn!(
                error = %e,
                "agents are not told this coordinator's own address; set coordinator.advertise \
                 so that they can fail over to it"
            ),
        }
    }

    pub fn listing(&self, store: &Store) -> Result<Listing, StoreError> {
        let advertise = self.advertise.get().cloned();
        let stored = store.coordinator_endpoints()?;
        Ok(Listing {
            told: told(advertise.as_ref(), &stored),
            advertise,
            stored,
        })
    }

    /// What a session's welcome carries. A store that cannot be read still
    /// leaves the own address: a welcome is not refused over it.
    pub fn welcome_list(&self, store: &Store) -> Vec<String> {
        let stored = store.coordinator_endpoints().unwrap_or_else(|e| {
            warn!(error = %e, "the stored coordinator endpoints cannot be read; agents are told only this coordinator's address");
            Vec::new()
        });
        told(self.advertise.get(), &stored)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Stores `endpoint` (after the others) and hands the list to every
    /// connected agent.
    pub async fn add(
        &self,
        store: &Store,
        sessions: &Sessions,
        endpoint: &str,
    ) -> Result<Change, EndpointsError> {
        let endpoint = CoordinatorEndpoint::parse(endpoint)?;
        self.change(store, sessions, |stored| Ok(added(stored, &endpoint)))
            .await
    }

    /// Removes `endpoint` from the stored list and hands the list to every
    /// connected agent.
    pub async fn remove(
        &self,
        store: &Store,
        sessions: &Sessions,
        endpoint: &str,
    ) -> Result<Change, EndpointsError> {
        let endpoint = CoordinatorEndpoint::parse(endpoint)?;
        let own = self.advertise.get() == Some(&endpoint);
        self.change(store, sessions, |stored| match removed(stored, &endpoint) {
            Some(list) => Ok(Some(list)),
            None if own => Err(EndpointsError::Own {
                endpoint: endpoint.clone(),
            }),
            None => Err(EndpointsError::NotStored {
                endpoint: endpoint.clone(),
            }),
        })
        .await
    }

    /// `edit` answers the new stored list, or `None` when it would not
    /// change; the list is written (durably) before any agent is told.
    async fn change(
        &self,
        store: &Store,
        sessions: &Sessions,
        edit: impl FnOnce(
            &[CoordinatorEndpoint],
        ) -> Result<Option<Vec<CoordinatorEndpoint>>, EndpointsError>,
    ) -> Result<Change, EndpointsError> {
        let _one_at_a_time = self.changing.lock().await;
        let stored = store.coordinator_endpoints()?;
        let changed = match edit(&stored)? {
            Some(list) => {
                store
                    .apply(vec![Op::PutCoordinatorEndpoints(list.clone())])
                    .await?;
                info!(endpoints = ?list, "stored coordinator endpoints changed");
                true
            }
            None => false,
        };
        let listing = self.listing(store)?;
        let (acknowledged, not_acknowledged) = push(sessions, &listing.told).await;
        Ok(Change {
            listing,
            changed,
            acknowledged,
            not_acknowledged,
        })
    }
}

/// Hands `told` to every agent with a session now; who saved it and who
/// did not (with why), each sorted by name.
async fn push(
    sessions: &Sessions,
    told: &[CoordinatorEndpoint],
) -> (Vec<String>, Vec<(String, String)>) {
    let connected: Vec<String> = sessions
        .registry
        .nodes()
        .into_iter()
        .filter(|n| sessions.registry.outbox(n).is_some())
        .collect();
    let answers: Vec<(String, Result<(), String>)> = futures::stream::iter(connected)
        .map(|node| async move {
            let op = SetCoordinatorEndpoints {
                endpoints: told.to_vec(),
            };
            let r = call(sessions, &node, op).await;
            (node, r.map(|_| ()).map_err(|e| e.to_string()))
        })
        .buffer_unordered(PUSH_CONCURRENCY)
        .collect()
        .await;
    let (mut acknowledged, mut not_acknowledged) = (Vec::new(), Vec::new());
    for (node, r) in answers {
        match r {
            Ok(()) => acknowledged.push(node),
            Err(e) => {
                warn!(%node, error = %e, "an agent did not take the coordinator endpoints; it is told at its next session");
                not_acknowledged.push((node, e));
            }
        }
    }
    acknowledged.sort();
    not_acknowledged.sort();
    (acknowledged, not_acknowledged)
}

/// What agents are told: the own address first (the one that surely
/// serves now), then the stored ones, each once.
pub fn told(
    advertise: Option<&CoordinatorEndpoint>,
    stored: &[CoordinatorEndpoint],
) -> Vec<CoordinatorEndpoint> {
    let mut out: Vec<CoordinatorEndpoint> = advertise.into_iter().cloned().collect();
    for e in stored {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    out
}

/// `stored` with `endpoint` at the end; `None` if it is there already.
pub fn added(
    stored: &[CoordinatorEndpoint],
    endpoint: &CoordinatorEndpoint,
) -> Option<Vec<CoordinatorEndpoint>> {
    if stored.contains(endpoint) {
        return None;
    }
    let mut list = stored.to_vec();
    list.push(endpoint.clone());
    Some(list)
}

/// `stored` without `endpoint`; `None` if it is not there.
pub fn removed(
    stored: &[CoordinatorEndpoint],
    endpoint: &CoordinatorEndpoint,
) -> Option<Vec<CoordinatorEndpoint>> {
    stored
        .contains(endpoint)
        .then(|| stored.iter().filter(|e| *e != endpoint).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> CoordinatorEndpoint {
        CoordinatorEndpoint::parse(s).expect(s)
    }

    #[test]
    fn agents_are_told_the_own_address_first_then_the_stored_ones_once() {
        let stored = [ep("10.0.0.3:7443"), ep("10.0.0.2:7443")];
        assert_eq!(
            told(Some(&ep("10.0.0.2:7443")), &stored),
            [ep("10.0.0.2:7443"), ep("10.0.0.3:7443")]
        );
        assert_eq!(told(None, &stored), stored);
        assert!(told(None, &[]).is_empty());
    }

    #[test]
    fn adding_appends_once_and_removing_keeps_the_order() {
        let one = added(&[], &ep("a:1")).expect("new");
        let two = added(&one, &ep("b:1")).expect("new");
        assert_eq!(two, [ep("a:1"), ep("b:1")]);
        assert_eq!(
            added(&two, &ep("A:1")),
            None,
            "the same endpoint, spelt otherwise"
        );
        let three = added(&two, &ep("c:1")).expect("new");
        assert_eq!(
            removed(&three, &ep("b:1")).expect("there"),
            [ep("a:1"), ep("c:1")]
        );
        assert_eq!(removed(&three, &ep("d:1")), None);
    }

    #[tokio::test]
    async fn the_list_is_stored_changed_and_refused_with_reasons() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        let sessions = Sessions::default();
        let endpoints = Endpoints::default();
        endpoints.set_advertise("0.0.0.0:7443".parse().expect("addr"));
        assert_eq!(endpoints.listing(&store).expect("list").advertise, None);
        let endpoints = Endpoints::default();
        endpoints.set_advertise("10.0.0.1:7443".parse().expect("addr"));

        let c = endpoints
            .add(&store, &sessions, "10.0.0.2:7443")
            .await
            .expect("add");
        assert!(c.changed);
        assert!(c.acknowledged.is_empty() && c.not_acknowledged.is_empty());
        assert_eq!(c.listing.told, [ep("10.0.0.1:7443"), ep("10.0.0.2:7443")]);
        assert_eq!(
            endpoints.welcome_list(&store),
            ["10.0.0.1:7443", "10.0.0.2:7443"]
        );
        let again = endpoints
            .add(&store, &sessions, "10.0.0.2:7443")
            .await
            .expect("add");
        assert!(!again.changed);

        let bad = endpoints.add(&store, &sessions, "10.0.0.2:0").await;
        assert!(matches!(bad, Err(EndpointsError::Bad(_))), "{bad:?}");
        let own = endpoints.remove(&store, &sessions, "10.0.0.1:7443").await;
        assert!(matches!(own, Err(EndpointsError::Own { .. })), "{own:?}");
        let absent = endpoints.remove(&store, &sessions, "10.0.0.9:7443").await;
        assert!(
            matches!(absent, Err(EndpointsError::NotStored { .. })),
            "{absent:?}"
        );
        let c = endpoints
            .remove(&store, &sessions, "10.0.0.2:7443")
            .await
            .expect("remove");
        assert!(c.changed);
        assert_eq!(c.listing.stored, []);
        assert_eq!(store.coordinator_endpoints().expect("read"), []);
    }
}
