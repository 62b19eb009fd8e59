//! Taking a node out before it is removed (its certificate revoked, its
//! droplet deleted), the way an operator would: its database server leaves
//! through the database's own API (`database::leave`: the last server
//! only), then a manager drains and demotes it, it leaves, and a manager
//! drops it from the node list. Swarm steps that cannot run (the host is
//! already gone) are reported and skipped, so a dead host can still be
//! removed; a database that cannot let its server go refuses the drain.

use apiary_api::ops::{ReadSwarm, SwarmDrain, SwarmLeave, SwarmRemoveNode};
use tracing::info;

use super::plan::members;
use crate::config::SwarmConfig;
use crate::context::ClusterContext;
use crate::database::DatabaseError;
use crate::sessions::call;

/// Drains `node`: one sentence per step, or why the database refuses.
pub async fn drain_node(
    ctx: &dyn ClusterContext,
    config: &SwarmConfig,
    node: &str,
) -> Result<Vec<String>, DatabaseError> {
    let mut steps = Vec::new();
    let hosts = members(&ctx.nodes(), config);
    if let Some(db) = &config.database {
        let first_manager = hosts.iter().find(|h| h.manager).map(|h| h.name.as_str());
        let left =
            crate::database::leave(ctx, db, &config.overlay, hosts.len(), first_manager, node)
                .await?;
        steps.extend(left);
    }
    // Asked of a manager now, not read from the last round: right after a
    // coordinator restart no round has finished yet.
    let cached = ctx.view().checks().swarm;
    let mut manager = None;
    let mut in_swarm = cached.contains_key(node);
    for h in hosts.into_iter().filter(|h| h.name != node) {
        if !(h.manager || cached.get(&h.name).is_some_and(|n| n.role == "manager")) {
            continue;
        }
        if let Ok(view) = call(ctx.agents(), &h.name, ReadSwarm {}).await
            && view.manager
        {
            in_swarm = view.nodes.iter().any(|n| n.hostname == node);
            manager = Some(h.name);
            break;
        }
    }
    if !in_swarm {
        steps.push(format!("swarm: {node} is not a swarm node"));
        return Ok(steps);
    }
    let Some(manager) = manager else {
        steps.push(
            "swarm: no other manager is ready; the swarm keeps its entry for this node".into(),
        );
        return Ok(steps);
    };
    let node_s = node.to_string();
    steps.push(
        match call(
            ctx.agents(),
            &manager,
            SwarmDrain {
                node: node_s.clone(),
            },
        )
        .await
        {
            Ok(_) => format!("swarm: {node} drained and demoted (by {manager})"),
            Err(e) => format!("swarm: could not drain {node}: {e}"),
        },
    );
    steps.push(match call(ctx.agents(), node, SwarmLeave {}).await {
        Ok(_) => format!("swarm: {node} left the swarm"),
        Err(e) => {
            format!("swarm: {node} could not leave ({e}); removed from the node list instead")
        }
    });
    steps.push(
        match call(ctx.agents(), &manager, SwarmRemoveNode { node: node_s }).await {
            Ok(_) => format!("swarm: {node} removed from the node list"),
            Err(e) => format!("swarm: could not remove {node} from the node list: {e}"),
        },
    );
    for s in &steps {
        info!(node, step = %s, "drain");
    }
    Ok(steps)
}
