//! arcade's distributed PacMan: one maze split into vertical stripes, one stripe per gateway.
//! Each gateway is the authority for its stripe (its pellets, its ghost, the players inside
//! it); a player who walks across a border is handed, with its score, to the gateway of the
//! next stripe. Players always talk to their own gateway, which forwards their steering to
//! whichever gateway holds them and shows them the whole maze.
//!
//! This module is the game without I/O: the maze, a stripe's world, one tick, and the checks
//! on everything that arrives from a browser or another gateway.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The maze: `#` wall, `.` pellet, ` ` open floor. Its outer walls are closed, so a player
/// crosses a stripe's border only between two stripes.
pub const MAZE: &[&str] = &[
    "################################################",
    "#..............................................#",
    "#.####.#####.###.######.######.###.#####.####..#",
    "#.#  #.#   #.# #.#    #.#    #.# #.#   #.#  #..#",
    "#.####.#####.###.######.######.###.#####.####..#",
    "#..............................................#",
    "#.####.##.########.##.####.##.########.##.####.#",
    "#......##....##....##......##....##....##......#",
    "######.#####.##.#####.####.#####.##.#####.######",
    "#..............................................#",
    "#.####.#####.###.######.######.###.#####.####..#",
    "#..............................................#",
    "################################################",
];

pub fn width() -> i32 {
    MAZE[0].len() as i32
}

pub fn height() -> i32 {
    MAZE.len() as i32
}

pub fn wall(x: i32, y: i32) -> bool {
    if x < 0 || y < 0 || x >= width() || y >= height() {
        return true;
    }
    MAZE[y as usize].as_bytes()[x as usize] == b'#'
}

/// The columns `[start, end)` of stripe `part` of `parts`.
pub fn columns(part: usize, parts: usize) -> (i32, i32) {
    let w = width() as usize;
    ((part * w / parts) as i32, ((part + 1) * w / parts) as i32)
}

/// The stripe holding column `x`.
pub fn part_of(x: i32, parts: usize) -> usize {
    (0..parts)
        .find(|p| {
            let (a, b) = columns(*p, parts);
            (a..b).contains(&x)
        })
        .unwrap_or(0)
}

/// Every pellet of the maze: the most points a player can hold.
pub fn all_pellets() -> u32 {
    MAZE.iter()
        .map(|row| row.bytes().filter(|b| *b == b'.').count() as u32)
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Up,
    Down,
    Left,
    Right,
    Stop,
}

impl Dir {
    pub fn delta(self) -> (i32, i32) {
        match self {
            Dir::Up => (0, -1),
            Dir::Down => (0, 1),
            Dir::Left => (-1, 0),
            Dir::Right => (1, 0),
            Dir::Stop => (0, 0),
        }
    }
}

/// A player as every gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Player {
    /// Public: 16 hex digits.
    pub id: String,
    pub name: String,
    pub x: i32,
    pub y: i32,
    pub dir: Dir,
    pub score: u32,
    /// Moves made so far: of two sightings of a player, the one with more moves is newer.
    pub seq: u64,
    /// The stripe of the gateway the player plays from.
    pub home: usize,
}

/// A player with what only gateways hold: the key that steers it and the turn it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    #[serde(flatten)]
    pub player: Player,
    /// Secret: 32 hex digits; whoever steers must give it.
    pub key: String,
    pub want: Dir,
}

/// What a stripe shows the other gateways and its own players.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub part: usize,
    pub tick: u64,
    /// Pellets still in the stripe.
    pub pellets: Vec<(i32, i32)>,
    pub players: Vec<Player>,
    pub ghost: (i32, i32),
}

/// Why something from a browser or a gateway was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Bad(String),
    Unknown(String),
    WrongKey,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Bad(why) => f.write_str(why),
            Refusal::Unknown(id) => write!(f, "no player `{id}` in this part of the maze"),
            Refusal::WrongKey => f.write_str("that key does not steer this player"),
        }
    }
}

/// One stripe of the maze.
#[derive(Debug)]
pub struct Stripe {
    pub part: usize,
    pub parts: usize,
    pub tick: u64,
    pellets: BTreeSet<(i32, i32)>,
    players: BTreeMap<String, Held>,
    ghost: (i32, i32),
    /// xorshift state for the ghost's turns.
    rng: u64,
}

/// A player walking out of this stripe, for the gateway of `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaving {
    pub to: usize,
    pub held: Held,
}

pub fn valid_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.chars().count() <= 16
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Refusal::Bad(format!(
            "name {name:?}: 1 to 16 letters, digits, spaces, `-` or `_`"
        )))
    }
}

fn hex_of(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Stripe {
    pub fn new(part: usize, parts: usize, seed: u64) -> Stripe {
        let (a, b) = columns(part, parts);
        let mut pellets = BTreeSet::new();
        for (y, row) in MAZE.iter().enumerate() {
            for x in a..b {
                if row.as_bytes()[x as usize] == b'.' {
                    pellets.insert((x, y as i32));
                }
            }
        }
        // The ghost starts on the stripe's first open cell of the middle corridor.
        let ghost = (a..b)
            .map(|x| (x, 9))
            .find(|(x, y)| !wall(*x, *y))
            .unwrap_or((a, 1));
        Stripe {
            part,
            parts,
            tick: 0,
            pellets,
            players: BTreeMap::new(),
            ghost,
            rng: seed | 1,
        }
    }

    pub fn holds(&self, x: i32) -> bool {
        let (a, b) = columns(self.part, self.parts);
        (a..b).contains(&x)
    }

    /// A new player of this gateway, on the stripe's first open cell of the top corridor.
    pub fn join(&mut self, id: String, key: String, name: &str) -> Result<Held, Refusal> {
        valid_name(name)?;
        if self.players.len() >= 64 {
            return Err(Refusal::Bad(
                "64 players in this part already; try later".into(),
            ));
        }
        let (a, b) = columns(self.part, self.parts);
        let (x, y) = (a..b)
            .map(|x| (x, 1))
            .find(|(x, y)| !wall(*x, *y))
            .ok_or_else(|| Refusal::Bad("this part has no room".into()))?;
        let held = Held {
            player: Player {
                id: id.clone(),
                name: name.to_string(),
                x,
                y,
                dir: Dir::Stop,
                score: 0,
                seq: 0,
                home: self.part,
            },
            key,
            want: Dir::Stop,
        };
        self.players.insert(id, held.clone());
        Ok(held)
    }

    pub fn steer(&mut self, id: &str, key: &str, want: Dir) -> Result<(), Refusal> {
        let held = self
            .players
            .get_mut(id)
            .ok_or_else(|| Refusal::Unknown(id.to_string()))?;
        if held.key != key {
            return Err(Refusal::WrongKey);
        }
        held.want = want;
        Ok(())
    }

    /// Takes in a player handed over by the neighbouring stripe: it must stand in this stripe
    /// on its border column, on open floor, with a score no player could exceed.
    pub fn arrive(&mut self, held: Held) -> Result<(), Refusal> {
        let p = &held.player;
        if !hex_of(&p.id, 16) || !hex_of(&held.key, 32) {
            return Err(Refusal::Bad(
                "a player's id is 16 hex digits, its key 32".into(),
            ));
        }
        valid_name(&p.name)?;
        let (a, b) = columns(self.part, self.parts);
        if !(p.x == a || p.x == b - 1) || !self.holds(p.x) || wall(p.x, p.y) {
            return Err(Refusal::Bad(format!(
                "({}, {}) is not on a border of part {} (columns {a} to {})",
                p.x,
                p.y,
                self.part,
                b - 1
            )));
        }
        if p.score > all_pellets() || p.home >= self.parts {
            return Err(Refusal::Bad("score or home out of range".into()));
        }
        if self.players.contains_key(&p.id) {
            return Err(Refusal::Bad(format!("player `{}` is here already", p.id)));
        }
        if self.players.len() >= 64 {
            return Err(Refusal::Bad("64 players in this part already".into()));
        }
        self.players.insert(p.id.clone(), held);
        Ok(())
    }

    /// Puts back a player whose hand-over failed, where it stood before.
    pub fn stay(&mut self, mut held: Held, x: i32) {
        held.player.x = x;
        held.player.seq += 1;
        held.player.dir = Dir::Stop;
        self.players.insert(held.player.id.clone(), held);
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One tick: every player turns if it can and moves one cell; pellets are eaten; the ghost
    /// wanders its stripe and costs a player it meets 10 points. Players who walk out are
    /// returned (already moved) for the next stripe's gateway.
    pub fn step(&mut self) -> Vec<Leaving> {
        self.tick += 1;
        let mut leaving = Vec::new();
        let ids: Vec<String> = self.players.keys().cloned().collect();
        for id in ids {
            let Some(mut held) = self.players.remove(&id) else {
                continue;
            };
            let p = &mut held.player;
            let (wx, wy) = held.want.delta();
            if !wall(p.x + wx, p.y + wy) {
                p.dir = held.want;
            }
            let (dx, dy) = p.dir.delta();
            if (dx, dy) != (0, 0) && !wall(p.x + dx, p.y + dy) {
                p.x += dx;
                p.y += dy;
                p.seq += 1;
            }
            if !self.holds(p.x) {
                leaving.push(Leaving {
                    to: part_of(p.x, self.parts),
                    held,
                });
                continue;
            }
            if self.pellets.remove(&(p.x, p.y)) {
                p.score += 1;
            }
            self.players.insert(id, held);
        }
        // The ghost: on, or turn at random among the open ways that stay in the stripe.
        let (gx, gy) = self.ghost;
        let ways: Vec<(i32, i32)> = [(1, 0), (-1, 0), (0, 1), (0, -1)]
            .into_iter()
            .filter(|(dx, dy)| !wall(gx + dx, gy + dy) && self.holds(gx + dx))
            .collect();
        if !ways.is_empty() {
            let (dx, dy) = ways[(self.random() % ways.len() as u64) as usize];
            self.ghost = (gx + dx, gy + dy);
        }
        for held in self.players.values_mut() {
            let p = &mut held.player;
            if (p.x, p.y) == self.ghost {
                p.score = p.score.saturating_sub(10);
            }
        }
        leaving
    }

    pub fn view(&self) -> View {
        View {
            part: self.part,
            tick: self.tick,
            pellets: self.pellets.iter().copied().collect(),
            players: self.players.values().map(|h| h.player.clone()).collect(),
            ghost: self.ghost,
        }
    }

    pub fn player(&self, id: &str) -> Option<&Held> {
        self.players.get(id)
    }
}

/// Merges what the stripes showed: of two sightings of one player (one hand-over in flight),
/// the one with more moves.
pub fn merge(views: &[View]) -> Vec<Player> {
    let mut by_id: BTreeMap<&str, &Player> = BTreeMap::new();
    for p in views.iter().flat_map(|v| &v.players) {
        match by_id.get(p.id.as_str()) {
            Some(q) if q.seq >= p.seq => {}
            _ => {
                by_id.insert(&p.id, p);
            }
        }
    }
    by_id.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef";
    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_maze_is_closed_and_its_stripes_cover_it() {
        assert!(MAZE.iter().all(|r| r.len() == MAZE[0].len()));
        for x in 0..width() {
            assert!(wall(x, 0) && wall(x, height() - 1));
        }
        for y in 0..height() {
            assert!(wall(0, y) && wall(width() - 1, y));
        }
        for parts in 1..=4 {
            let mut next = 0;
            for p in 0..parts {
                let (a, b) = columns(p, parts);
                assert_eq!(a, next);
                next = b;
                assert_eq!(part_of(a, parts), p);
            }
            assert_eq!(next, width());
        }
    }

    #[test]
    fn a_player_walks_east_across_the_border_and_arrives_next_door() {
        let mut west = Stripe::new(0, 2, 1);
        let mut east = Stripe::new(1, 2, 2);
        let held = west.join(ID.into(), KEY.into(), "ann").unwrap();
        assert_eq!((held.player.x, held.player.y), (1, 1));
        assert_eq!(
            west.steer(ID, "f".repeat(32).as_str(), Dir::Right),
            Err(Refusal::WrongKey)
        );
        west.steer(ID, KEY, Dir::Right).unwrap();
        let border = columns(0, 2).1;
        let mut leaving = Vec::new();
        for _ in 0..100 {
            leaving = west.step();
            if !leaving.is_empty() {
                break;
            }
        }
        let out = leaving.pop().expect("it left the west stripe");
        assert_eq!((out.to, out.held.player.x), (1, border));
        assert_eq!(
            out.held.player.score,
            (border - 2) as u32,
            "one pellet a cell"
        );
        assert!(west.player(ID).is_none());
        east.arrive(out.held.clone()).unwrap();
        assert_eq!(
            east.arrive(out.held.clone()),
            Err(Refusal::Bad(format!("player `{ID}` is here already")))
        );
        east.step();
        let p = &east.player(ID).unwrap().player;
        assert_eq!((p.x, p.seq), (border + 1, out.held.player.seq + 1));
        // The merge keeps the newer sighting of a player seen twice.
        let mut old = west.view();
        old.players.push(out.held.player.clone());
        let merged = merge(&[old, east.view()]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].x, border + 1);
    }

    #[test]
    fn hand_overs_that_could_not_happen_are_refused() {
        let mut east = Stripe::new(1, 2, 2);
        let border = columns(1, 2).0;
        let good = Held {
            player: Player {
                id: ID.into(),
                name: "bob".into(),
                x: border,
                y: 1,
                dir: Dir::Right,
                score: 3,
                seq: 20,
                home: 0,
            },
            key: KEY.into(),
            want: Dir::Right,
        };
        let with = |f: &dyn Fn(&mut Held)| {
            let mut h = good.clone();
            f(&mut h);
            h
        };
        for (bad, why) in [
            (with(&|h| h.player.x = border + 5), "border"),
            (with(&|h| h.player.y = 0), "border"),
            (with(&|h| h.player.score = 100_000), "score"),
            (with(&|h| h.player.home = 9), "home"),
            (with(&|h| h.player.id = "zz".into()), "hex"),
            (with(&|h| h.key = "k".into()), "hex"),
            (with(&|h| h.player.name = "<script>".into()), "name"),
        ] {
            match east.arrive(bad) {
                Err(Refusal::Bad(msg)) => assert!(msg.contains(why), "{msg}"),
                other => panic!("{other:?}"),
            }
        }
        east.arrive(good).unwrap();
    }
}
