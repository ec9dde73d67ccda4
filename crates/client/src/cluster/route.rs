//! Splitting a pipeline over a cluster's primaries, pure: each command goes to the node
//! that owns its key, in the pipeline's order, and each reply is found again afterwards.
//!
//! Why per command and not per pipeline: metacache's batches touch keys of every slot, and
//! the redis crate's cluster connection sends a pipeline whole to the node of its first key
//! (a `CROSSSLOT` error otherwise). Every command metacache sends touches one key (or
//! keys of one slot), so a batch splits into one sub-pipeline per node without changing
//! what any key sees: commands for one key keep their order because they go to one node
//! on one connection, in order.

use redis::Cmd;

/// Where one command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node that owns this slot.
    Slot(u16),
    /// `CLIENT ID`: answered by the cluster connection itself (see
    /// [`super::ClusterConnection`]'s generation).
    ClientId,
    /// `WAIT`: every node the request wrote to must have its replicas acknowledge; the
    /// answer is the fewest replicas any of them reached.
    Wait,
    /// A command without a key (`PING`, `INFO`, `SCRIPT LOAD`, `CLIENT SETNAME`): inside a
    /// pipeline it goes to a node the pipeline uses anyway; alone, to every primary.
    Any,
}

/// Where `cmd` goes.
pub fn target(cmd: &Cmd) -> Target {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let Some(name) = args.next() else {
        return Target::Any;
    };
    let name = name.to_ascii_uppercase();
    match name.as_slice() {
        b"CLIENT" => match args.next().map(|a| a.to_ascii_uppercase()) {
            Some(sub) if sub == b"ID" => Target::ClientId,
            _ => Target::Any,
        },
        b"WAIT" => Target::Wait,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _body = args.next();
            let keys = args
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            match (keys, args.next()) {
                (1.., Some(key)) => Target::Slot(metacache_contract::keys::hash_slot(key)),
                _ => Target::Any,
            }
        }
        b"PING" | b"INFO" | b"SCRIPT" | b"CONFIG" | b"ROLE" | b"DBSIZE" | b"SCAN" | b"ECHO"
        | b"TIME" | b"FLUSHALL" | b"FLUSHDB" | b"CLUSTER" | b"HELLO" | b"AUTH" | b"SELECT"
        | b"READONLY" | b"READWRITE" | b"COMMAND" | b"FUNCTION" | b"LASTSAVE" | b"MULTI"
        | b"EXEC" | b"DISCARD" => Target::Any,
        _ => match args.next() {
            Some(key) => Target::Slot(metacache_contract::keys::hash_slot(key)),
            None => Target::Any,
        },
    }
}

/// Where each reply of a split pipeline is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The reply at `pos` of the sub-pipeline sent to `node`.
    At {
        /// The node's index among the slot map's primaries.
        node: usize,
        /// The reply's place in that node's sub-pipeline.
        pos: usize,
    },
    /// The cluster connection's generation (`CLIENT ID`).
    ClientId,
    /// The smallest of these replies (`WAIT`).
    Fewest(Vec<(usize, usize)>),
}

/// A pipeline split per node: for each node (by index into the slot map's primaries) the
/// original commands' indices in order, and where each original reply will be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Each node used, with the indices of the commands it gets, in order.
    pub per_node: Vec<(usize, Vec<usize>)>,
    /// One per original command.
    pub answers: Vec<Answer>,
}

impl Split {
    fn sub(&mut self, node: usize) -> &mut Vec<usize> {
        let at = match self.per_node.iter().position(|(n, _)| *n == node) {
            Some(at) => at,
            None => {
                self.per_node.push((node, Vec::new()));
                self.per_node.len() - 1
            }
        };
        &mut self.per_node[at].1
    }

    fn add(&mut self, node: usize, command: usize) -> Answer {
        let sub = self.sub(node);
        sub.push(command);
        let pos = sub.len() - 1;
        Answer::At { node, pos }
    }
}

/// Splits commands with these targets over nodes; `owner` gives a slot's node. `Err`
/// names a slot no node serves. A keyless command goes to the node of the command before
/// it (else the first keyed one, else `fallback`).
pub fn split(
    targets: &[Target],
    owner: impl Fn(u16) -> Option<usize>,
    fallback: usize,
) -> Result<Split, u16> {
    let mut out = Split::default();
    let mut nodes = Vec::with_capacity(targets.len());
    for t in targets {
        nodes.push(match t {
            Target::Slot(slot) => Some(owner(*slot).ok_or(*slot)?),
            _ => None,
        });
    }
    let first_keyed = nodes.iter().flatten().next().copied().unwrap_or(fallback);
    let mut last = first_keyed;
    for (i, (t, node)) in targets.iter().zip(&nodes).enumerate() {
        let answer = match (t, node) {
            (Target::Slot(_), Some(node)) => {
                last = *node;
                out.add(*node, i)
            }
            (Target::ClientId, _) => Answer::ClientId,
            (Target::Wait, _) => {
                if out.per_node.is_empty() {
                    out.sub(last);
                }
                let everyone: Vec<usize> = out.per_node.iter().map(|(n, _)| *n).collect();
                let mut at = Vec::with_capacity(everyone.len());
                for node in everyone {
                    let sub = out.sub(node);
                    sub.push(i);
                    at.push((node, sub.len() - 1));
                }
                Answer::Fewest(at)
            }
            _ => out.add(last, i),
        };
        out.answers.push(answer);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metacache_contract::keys::hash_slot;

    fn cmd(args: &[&str]) -> Cmd {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c
    }

    #[test]
    fn commands_are_routed_by_their_key() {
        assert_eq!(
            target(&cmd(&["SET", "device:a", "v"])),
            Target::Slot(hash_slot(b"device:a"))
        );
        assert_eq!(
            target(&cmd(&["EVALSHA", "abc", "1", "device:b", "json"])),
            Target::Slot(hash_slot(b"device:b"))
        );
        assert_eq!(target(&cmd(&["EVALSHA", "abc", "0"])), Target::Any);
        assert_eq!(
            target(&cmd(&["zadd", "devices:{3}", "GT", "1", "x"])),
            Target::Slot(hash_slot(b"3"))
        );
        assert_eq!(target(&cmd(&["CLIENT", "ID"])), Target::ClientId);
        assert_eq!(target(&cmd(&["client", "setname", "w"])), Target::Any);
        assert_eq!(target(&cmd(&["WAIT", "1", "100"])), Target::Wait);
        assert_eq!(target(&cmd(&["INFO", "memory"])), Target::Any);
        assert_eq!(target(&cmd(&["PING"])), Target::Any);
    }

    #[test]
    fn a_split_keeps_each_nodes_commands_in_order_and_finds_every_reply() {
        // Slots 0..100 on node 0, the rest on node 1.
        let owner = |s: u16| Some(usize::from(s >= 100));
        let targets = [
            Target::Slot(5),
            Target::Slot(500),
            Target::Slot(7),
            Target::ClientId,
            Target::Slot(600),
            Target::Wait,
        ];
        let split = split(&targets, owner, 0).unwrap();
        assert_eq!(split.per_node, [(0, vec![0, 2, 5]), (1, vec![1, 4, 5])]);
        assert_eq!(
            split.answers,
            [
                Answer::At { node: 0, pos: 0 },
                Answer::At { node: 1, pos: 0 },
                Answer::At { node: 0, pos: 1 },
                Answer::ClientId,
                Answer::At { node: 1, pos: 1 },
                Answer::Fewest(vec![(0, 2), (1, 2)]),
            ]
        );
    }

    #[test]
    fn keyless_commands_go_with_their_neighbours_and_unserved_slots_are_named() {
        let owner = |s: u16| (s != 42).then_some(usize::from(s >= 100));
        let split = split(&[Target::Any, Target::Slot(500), Target::Any], owner, 0).unwrap();
        assert_eq!(split.per_node, [(1, vec![0, 1, 2])]);
        let alone = super::split(&[Target::Any, Target::Wait], owner, 0).unwrap();
        assert_eq!(alone.per_node, [(0, vec![0, 1])]);
        assert_eq!(super::split(&[Target::Slot(42)], owner, 0), Err(42));
    }
}
