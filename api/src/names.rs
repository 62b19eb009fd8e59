//! Node and cluster names: one rule, used by the cluster file, enrollment,
//! the lab and DigitalOcean.
//!
//! A node's name becomes its host's hostname, its Swarm node's hostname
//! (services are pinned with `node.hostname==NAME`), a DNS name on the
//! overlay, a droplet name and, in the lab, a path component and a process
//! name. The one rule that is all of these at once is a lowercase DNS label
//! (RFC 1123): 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or
//! ending with `-`. A cluster's name follows the same rule with at most 32
//! characters ([`MAX_CLUSTER_NAME`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest node name: a DNS label's limit.
pub const MAX_NODE_NAME: usize = 63;
/// Longest cluster name: it prefixes names made from it (tags, volumes,
/// the lab's namespaces), which must stay within their own limits.
pub const MAX_CLUSTER_NAME: usize = 32;

/// A name that breaks the rule; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} name {name:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: &'static str,
}

fn check(what: &'static str, name: &str) -> Result<(), NameError> {
    let bad = |reason| NameError {
        what,
        name: name.to_string(),
        reason,
    };
    let (max, length) = if what == "cluster" {
        (MAX_CLUSTER_NAME, "use 1 to 32 characters")
    } else {
        (MAX_NODE_NAME, "use 1 to 63 characters")
    };
    if name.is_empty() || name.len() > max {
        return Err(bad(length));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("use only a-z, 0-9 and '-' (a hostname label)"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(bad("do not start or end with '-'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(raw: &str) -> Result<Self, NameError> {
                check($what, raw)?;
                Ok($ty(raw.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(raw: String) -> Result<Self, NameError> {
                check($what, &raw)?;
                Ok($ty(raw))
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(raw: &str) -> Result<Self, NameError> {
                $ty::parse(raw)
            }
        }
    };
}

name_type!(
    /// A host's name in the cluster (see the module docs for the rule).
    NodeName,
    "node"
);
name_type!(
    /// A cluster's name: it prefixes the lab's bridges, tags droplets and
    /// names the CA, so it follows the same rule as a node's.
    ClusterName,
    "cluster"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_name() {
        for ok in ["queenbee", "workerbee-10", "a", "node-1", &"a".repeat(32)] {
            assert!(NodeName::parse(ok).is_ok(), "{ok}");
            assert!(ClusterName::parse(ok).is_ok(), "{ok}");
        }
        assert!(NodeName::parse(&"a".repeat(63)).is_ok());
        let e = ClusterName::parse(&"a".repeat(33)).expect_err("too long for a cluster");
        assert_eq!(
            e.to_string(),
            format!("cluster name {:?}: use 1 to 32 characters", "a".repeat(33))
        );
        for (bad, why) in [
            ("", "1 to 63"),
            (&"a".repeat(64), "1 to 63"),
            ("Queen", "a-z"),
            ("node_1", "a-z"),
            ("node.1", "a-z"),
            ("../x", "a-z"),
            ("-node", "start or end"),
            ("node-", "start or end"),
        ] {
            let e = NodeName::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.to_string().starts_with("node name"), "{e}");
        }
    }

    #[test]
    fn names_are_checked_when_deserialized() {
        let n: NodeName = serde_json::from_str("\"workerbee-1\"").expect("valid");
        assert_eq!(n.as_str(), "workerbee-1");
        assert!(serde_json::from_str::<NodeName>("\"bad name\"").is_err());
    }
}
