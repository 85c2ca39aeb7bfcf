//! The memory-quality benchmark: a seeded generator of users and sessions — facts, later updates
//! of facts, forget requests, two-step chains, distractor chatter — and questions with their gold
//! evidence; and the evaluation of a [`MemoryManager`] on them.

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use crate::manager::MemoryManager;
use crate::tiers::Result;
use crate::types::{ForgetFilter, Kind, NewMemory, RecallQuery};

const ATTRIBUTES: &[(&str, &str, &[&str])] = &[
    (
        "favourite editor",
        "which editor do I like best?",
        &[
            "Helix",
            "Vim",
            "Emacs",
            "Zed",
            "VS Code",
            "Sublime Text",
            "Kakoune",
            "Nano",
        ],
    ),
    (
        "home city",
        "in which city do I live?",
        &[
            "Lisbon", "Porto", "Berlin", "Osaka", "Toronto", "Nairobi", "Lima", "Oslo",
        ],
    ),
    (
        "employer",
        "which company do I work for?",
        &[
            "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
        ],
    ),
    (
        "favourite food",
        "what do I like to eat most?",
        &[
            "ramen", "lasagne", "tacos", "pho", "paella", "curry", "sushi", "falafel",
        ],
    ),
    (
        "car",
        "what car do I drive?",
        &[
            "a Skoda Octavia",
            "a Tesla Model 3",
            "a Fiat Panda",
            "a Volvo V60",
            "a Mazda MX-5",
            "a Renault Zoe",
        ],
    ),
    (
        "favourite band",
        "which band do I listen to most?",
        &[
            "Radiohead",
            "Daft Punk",
            "ABBA",
            "Queen",
            "Portishead",
            "Massive Attack",
        ],
    ),
    (
        "dentist",
        "who is my dentist?",
        &[
            "Dr Silva",
            "Dr Okafor",
            "Dr Brandt",
            "Dr Tanaka",
            "Dr Moreau",
            "Dr Novak",
        ],
    ),
    (
        "gym",
        "where do I work out?",
        &[
            "Iron Temple",
            "FitHub",
            "Gold's",
            "Urban Climb",
            "Pulse Studio",
            "Core Club",
        ],
    ),
    (
        "phone",
        "which phone do I use?",
        &[
            "a Pixel 8",
            "an iPhone 15",
            "a Fairphone 5",
            "a Galaxy S24",
            "a Nothing Phone",
        ],
    ),
    (
        "favourite colour",
        "what colour do I like most?",
        &["teal", "crimson", "ochre", "violet", "olive", "navy"],
    ),
    (
        "bank",
        "which bank do I use?",
        &["Monzo", "ING", "Revolut", "N26", "Barclays", "Santander"],
    ),
    (
        "doctor",
        "who is my family doctor?",
        &[
            "Dr Weiss",
            "Dr Costa",
            "Dr Haddad",
            "Dr Lindqvist",
            "Dr Mbeki",
        ],
    ),
];

const CHATTER: &[&str] = &[
    "we talked about the weather being rainy again",
    "I watched a documentary about deep sea creatures",
    "the meeting ran late because of the projector",
    "I need to buy more coffee filters this week",
    "the train was delayed by twenty minutes this morning",
    "we discussed whether to repaint the kitchen",
    "I read an article about electric bicycles",
    "the neighbours had a loud party on Saturday",
    "I fixed the leaking tap in the bathroom",
    "we planned a picnic if the sun comes out",
    "I forgot my umbrella at the office",
    "the printer ran out of toner during the report",
];

/// One question with its gold evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Question {
    /// Whose.
    pub user: String,
    /// The question.
    pub text: String,
    /// Texts that must be recalled (all of them for a two-step chain).
    pub gold: Vec<String>,
    /// Values that were current once and are not any more.
    pub stale: Vec<String>,
    /// Values that were forgotten: no hit may contain them.
    pub forgotten: Vec<String>,
    /// `fact`, `updated`, `forgotten`, `chain`.
    pub kind: &'static str,
}

/// One step of the generated history.
#[derive(Clone, Debug)]
pub enum Step {
    /// Remember this.
    Remember(NewMemory),
    /// Forget the user's fact about the attribute.
    Forget {
        /// Whose.
        user: String,
        /// Which attribute.
        attribute: String,
    },
}

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The history, in order.
    pub steps: Vec<Step>,
    /// The questions asked afterwards.
    pub questions: Vec<Question>,
}

/// A small seeded generator (splitmix64): the same seed, the same data, on every machine.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

/// Generates `users` users, each with one fact per attribute (some updated later, some
/// forgotten), a two-step chain, and `chatter` distractor memories; the same seed gives the
/// same scenario.
pub fn generate(seed: u64, users: usize, chatter: usize) -> Scenario {
    let mut rng = Rng(seed);
    let mut steps = Vec::new();
    let mut questions = Vec::new();
    let remember = |user: &str, text: String, kind: Kind| {
        Step::Remember(NewMemory {
            user: user.to_owned(),
            text,
            kind,
            source: Some("bench".into()),
            ..NewMemory::default()
        })
    };
    let mut later = Vec::new();
    for u in 0..users {
        let user = format!("user-{u}");
        for (attribute, question, values) in ATTRIBUTES {
            let first = values[rng.below(values.len())];
            steps.push(remember(
                &user,
                format!("my {attribute} is {first}"),
                Kind::Fact,
            ));
            let roll = rng.below(100);
            if roll < 25 {
                // Updated later: the newer value is the answer, the older one is stale.
                let mut second = values[rng.below(values.len())];
                while second == first {
                    second = values[rng.below(values.len())];
                }
                later.push(remember(
                    &user,
                    format!("my {attribute} is now {second}"),
                    Kind::Fact,
                ));
                questions.push(Question {
                    user: user.clone(),
                    text: (*question).to_owned(),
                    gold: vec![format!("my {attribute} is now {second}")],
                    stale: vec![first.to_owned()],
                    forgotten: vec![],
                    kind: "updated",
                });
            } else if roll < 35 {
                later.push(Step::Forget {
                    user: user.clone(),
                    attribute: (*attribute).to_owned(),
                });
                questions.push(Question {
                    user: user.clone(),
                    text: (*question).to_owned(),
                    gold: vec![],
                    stale: vec![],
                    forgotten: vec![first.to_owned()],
                    kind: "forgotten",
                });
            } else {
                questions.push(Question {
                    user: user.clone(),
                    text: (*question).to_owned(),
                    gold: vec![format!("my {attribute} is {first}")],
                    stale: vec![],
                    forgotten: vec![],
                    kind: "fact",
                });
            }
        }
        // A two-step chain: who my sister is, and where she lives.
        let names = [
            "Ana", "Beatriz", "Chloe", "Dana", "Elif", "Farah", "Greta", "Hana",
        ];
        let cities = [
            "Seville", "Kraków", "Ghent", "Bergen", "Kyoto", "Quito", "Tartu",
        ];
        let (name, city) = (
            names[rng.below(names.len())],
            cities[rng.below(cities.len())],
        );
        steps.push(remember(
            &user,
            format!("my sister is called {name}"),
            Kind::Fact,
        ));
        steps.push(remember(
            &user,
            format!("{name} lives in {city}"),
            Kind::Fact,
        ));
        questions.push(Question {
            user: user.clone(),
            text: "where does my sister live?".into(),
            gold: vec![
                format!("my sister is called {name}"),
                format!("{name} lives in {city}"),
            ],
            stale: vec![],
            forgotten: vec![],
            kind: "chain",
        });
        for i in 0..chatter {
            let base = CHATTER[rng.below(CHATTER.len())];
            let text = if rng.chance(50) {
                format!("{base} (day {i})")
            } else {
                base.to_owned()
            };
            steps.push(remember(&user, text, Kind::Episodic));
        }
    }
    steps.extend(later);
    Scenario { steps, questions }
}

/// The sentences distractor memories are made from: everyday notes that share words with the
/// questions (city, car, work, editor, food) without answering them. `n` distinct sentences.
pub fn distractor_sentences(n: usize) -> Vec<String> {
    const WHO: &[&str] = &[
        "my colleague",
        "the neighbour",
        "my sister",
        "an old friend",
        "the landlord",
        "my manager",
        "a customer",
        "the plumber",
    ];
    const DID: &[&str] = &[
        "complained about",
        "asked me about",
        "recommended",
        "joked about",
        "wrote an email about",
        "was late because of",
        "sent photos of",
        "could not stop talking about",
    ];
    const WHAT: &[&str] = &[
        "the traffic in the city centre",
        "a new text editor plugin",
        "the car park behind the office",
        "the canteen food at work",
        "a company offsite next month",
        "the price of train tickets",
        "a recipe for vegetable soup",
        "the broken lift in the building",
        "a podcast about history",
        "the football match on Sunday",
        "a bicycle repair shop",
        "the weather forecast for the weekend",
    ];
    const WHEN: &[&str] = &[
        "this morning",
        "at lunch",
        "yesterday evening",
        "on the phone",
        "during the meeting",
        "on the way home",
    ];
    let mut out = Vec::with_capacity(n);
    'all: for when in WHEN {
        for what in WHAT {
            for did in DID {
                for who in WHO {
                    if out.len() == n {
                        break 'all;
                    }
                    out.push(format!("{who} {did} {what} {when}"));
                }
            }
        }
    }
    out
}

/// `n` distractor memories with their vectors, for a store at scale: memory `i` is sentence
/// `i % sentences.len()` (numbered, so texts differ) with its vector plus a little noise, and
/// belongs to one of `users` half the time, else to one of a hundred other users.
pub fn distractors(
    seed: u64,
    users: &[String],
    sentences: &[(String, Vec<f32>)],
    from: usize,
    n: usize,
) -> Vec<(crate::types::Memory, Vec<f32>)> {
    let mut rng = Rng(seed ^ from as u64);
    let now = crate::types::now_us();
    (from..from + n)
        .map(|i| {
            let (text, vector) = &sentences[i % sentences.len()];
            let user = if rng.chance(50) && !users.is_empty() {
                users[rng.below(users.len())].clone()
            } else {
                format!("crowd-{}", rng.below(100))
            };
            let mut v: Vec<f32> = vector.iter().map(|x| x + 0.02 * rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            let at = now - 86_400_000_000 - (i as i64) * 1_000_000;
            (
                crate::types::Memory {
                    id: uuid::Uuid::now_v7(),
                    user,
                    kind: Kind::Episodic,
                    text: format!("{text} (note {i})"),
                    subject: None,
                    attribute: None,
                    value: None,
                    importance: 0.3,
                    created_us: at,
                    valid_from_us: at,
                    valid_to_us: None,
                    superseded_by: None,
                    source: "bench".into(),
                    metadata: Default::default(),
                },
                v,
            )
        })
        .collect()
}

/// What the benchmark measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Questions asked.
    pub questions: usize,
    /// Memories stored.
    pub memories: usize,
    /// Questions whose gold evidence is all in the first hit (first two for chains).
    pub recall_at_1: f64,
    /// … in the first 5.
    pub recall_at_5: f64,
    /// … in the first 10.
    pub recall_at_10: f64,
    /// Mean reciprocal rank of the first gold hit.
    pub mrr: f64,
    /// Of the questions about updated facts, the share whose first hit states an old value as
    /// current.
    pub stale_rate: f64,
    /// Hits containing a forgotten value (must be 0).
    pub forget_leaks: usize,
    /// Hits of another user (must be 0).
    pub cross_user_leaks: usize,
    /// Words returned per query (hits' texts), a proxy for prompt tokens.
    pub tokens_per_query: f64,
    /// Recall latency.
    pub p50_ms: f64,
    /// Recall latency.
    pub p95_ms: f64,
    /// Time to remember everything.
    pub ingest_s: f64,
    /// The questions whose gold evidence was not all in the first 10 hits, with what came first
    /// instead: where to look when quality drops.
    pub misses: Vec<Miss>,
}

/// A question the recall did not answer within its first 10 hits.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Miss {
    /// Whose question.
    pub user: String,
    /// The question.
    pub question: String,
    /// The evidence it needed.
    pub gold: Vec<String>,
    /// The first three hits' texts.
    pub got: Vec<String>,
}

/// Plays `scenario` into `m`, asks its questions (k = 10) and scores the answers.
pub async fn evaluate(m: &MemoryManager, scenario: &Scenario) -> Result<Report> {
    let t0 = Instant::now();
    let mut memories = 0;
    for step in &scenario.steps {
        match step {
            Step::Remember(new) => {
                m.remember(new.clone()).await?;
                memories += 1;
            }
            Step::Forget { user, attribute } => {
                m.forget(&ForgetFilter {
                    user: user.clone(),
                    subject: Some("user".into()),
                    attribute: Some(attribute.clone()),
                    ..ForgetFilter::default()
                })
                .await?;
            }
        }
    }
    let ingest_s = t0.elapsed().as_secs_f64();
    let mut r = Report {
        questions: scenario.questions.len(),
        memories,
        ingest_s,
        ..Report::default()
    };
    let (mut at1, mut at5, mut at10, mut rr, mut words) = (0.0, 0.0, 0.0, 0.0, 0usize);
    let (mut answerable, mut updated, mut stale) = (0usize, 0usize, 0usize);
    let mut latencies = Vec::new();
    for q in &scenario.questions {
        let t = Instant::now();
        let hits = m
            .recall(&RecallQuery {
                k: 10,
                ..RecallQuery::new(q.user.clone(), q.text.clone())
            })
            .await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        words += hits
            .iter()
            .map(|h| h.memory.text.split_whitespace().count())
            .sum::<usize>();
        r.cross_user_leaks += hits.iter().filter(|h| h.memory.user != q.user).count();
        r.forget_leaks += hits
            .iter()
            .filter(|h| {
                q.forgotten
                    .iter()
                    .any(|v| h.memory.text.contains(v.as_str()))
            })
            .count();
        if q.gold.is_empty() {
            continue;
        }
        answerable += 1;
        let texts: Vec<&str> = hits.iter().map(|h| h.memory.text.as_str()).collect();
        let need = q.gold.len();
        let found_within = |n: usize| {
            let top: HashSet<&str> = texts.iter().take(n.max(need)).copied().collect();
            q.gold.iter().all(|g| top.contains(g.as_str()))
        };
        at1 += f64::from(u8::from(found_within(1)));
        at5 += f64::from(u8::from(found_within(5)));
        if found_within(10) {
            at10 += 1.0;
        } else {
            r.misses.push(Miss {
                user: q.user.clone(),
                question: q.text.clone(),
                gold: q.gold.clone(),
                got: texts.iter().take(3).map(|t| (*t).to_owned()).collect(),
            });
        }
        if let Some(pos) = texts.iter().position(|t| q.gold.iter().any(|g| g == t)) {
            rr += 1.0 / (pos + 1) as f64;
        }
        if !q.stale.is_empty() {
            updated += 1;
            if hits.first().is_some_and(|h| {
                h.memory.is_current()
                    && q.stale.iter().any(|s| h.memory.text.ends_with(s.as_str()))
                    && !q.gold.contains(&h.memory.text)
            }) {
                stale += 1;
            }
        }
    }
    let round = |x: f64| (x * 10000.0).round() / 10000.0;
    let n = answerable.max(1) as f64;
    r.recall_at_1 = round(at1 / n);
    r.recall_at_5 = round(at5 / n);
    r.recall_at_10 = round(at10 / n);
    r.mrr = round(rr / n);
    r.stale_rate = round(stale as f64 / updated.max(1) as f64);
    r.tokens_per_query = round(words as f64 / scenario.questions.len().max(1) as f64);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    r.p50_ms = round(pct(0.5));
    r.p95_ms = round(pct(0.95));
    Ok(r)
}
