//! Hub-and-spoke routing: which topics an alert is published to.
//!
//! Routes form a tree, as in Alertmanager. The root matches every alert; each route's
//! children are tried in order and the first that matches wins, unless it sets
//! `continue = true`, in which case the following siblings are tried too. An alert goes to
//! the topic of every route it reaches that has no matching child; a route without a
//! `topic` inherits its parent's. The result lists each topic once, however many branches
//! lead to it.
//!
//! A route matches when all its matchers do: `match` (label = value), `match_any` (label ∈
//! values), and the typed conveniences `actor_kind`, `severity` (at least this severity)
//! and `source`. A missing label matches nothing. Alerts carry the labels
//! [`LABEL_ACTOR`], [`LABEL_ACTOR_KIND`], [`LABEL_SOURCE`], [`LABEL_RULE`] and [`LABEL_TEAM`]
//! when they apply.
//!
//! ```toml
//! [routing]
//! topic = "signals.notifications"   # the root's topic: where unmatched alerts go
//! [[routing.routes]]
//! actor_kind = "competitor"
//! topic = "signals.alerts.strategy"
//! [[routing.routes]]
//! severity = "critical"
//! match_any = { source = ["x", "reddit"] }
//! topic = "signals.alerts.oncall"
//! continue = true                   # critical alerts also go on down the list
//! [[routing.routes]]
//! match = { team = "support" }
//! topic = "signals.alerts.support"
//! ```
//!
//! # Presets
//!
//! `preset` writes the usual trees from a list of `teams`; each team says which actors
//! (`actors`, by catalog id) and which actor kinds (`actor_kinds`) it owns, and gets the
//! spoke topic `signals.alerts.<name>` unless it names its own `topic`. The teams that own
//! an alert are, by precedence: the configured team its `team` label names; else the teams
//! listing its actor; else the teams listing its actor kind; else none.
//!
//! ```toml
//! [routing]
//! preset = "collegial"
//! [[routing.teams]]
//! name = "marketing"
//! actor_kinds = ["own_brand", "product"]
//! [[routing.teams]]
//! name = "purchasing"
//! actor_kinds = ["supplier"]
//! actors = ["acme-rocket"]
//! [[routing.teams]]
//! name = "sales"
//! actor_kinds = ["customer", "supplier"]
//! ```
//!
//! - `distributed`: every department reads its own topic. An alert goes to the spoke of
//!   each owning team (a supplier alert above: `signals.alerts.purchasing` and
//!   `signals.alerts.sales`); an alert no team owns goes to the root topic, by default
//!   `signals.notifications`.
//! - `centralised` (or `centralized`): one social-media team triages everything; every
//!   alert goes to the root topic, by default `signals.alerts.social`. Teams are ignored.
//! - `collegial`: a shared hub plus per-team spokes, never both for one alert. An alert
//!   with exactly one owning team goes to that team's spoke (a product alert:
//!   `signals.alerts.marketing`; `acme-rocket`, listed by purchasing, goes to purchasing
//!   although it is a product); an alert owned by several teams (a supplier alert) or by
//!   none goes to the hub, the root topic, by default `signals.alerts.hub`.
//!
//! A preset expands into an ordinary route tree ([`RoutingConfig::expand`]), so the same
//! [`Router`] serves every configuration. Routes written next to a preset are tried before
//! the preset's, so a few exceptions can be added to a preset (for instance critical alerts
//! also to an on-call topic, with `continue = true`); `topic` overrides the preset's root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::ActorKind;
use crate::model::{Alert, Severity};

/// The catalog id of the actor an alert concerns.
pub const LABEL_ACTOR: &str = "actor";
/// That actor's [`ActorKind`], spelled as in the catalog (`own_brand`).
pub const LABEL_ACTOR_KIND: &str = "actor_kind";
/// Where the causing posts or events came from.
pub const LABEL_SOURCE: &str = "source";
/// The rule that raised the alert.
pub const LABEL_RULE: &str = "rule";
/// The team that owns the alert, when the rule names one.
pub const LABEL_TEAM: &str = "team";

/// The `[routing]` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    pub preset: Option<Preset>,
    /// The root's topic; defaults to the preset's (see [`Preset::default_topic`]), or
    /// `signals.notifications` without a preset.
    pub topic: Option<String>,
    /// The teams presets route to.
    pub teams: Vec<TeamConfig>,
    /// Children of the root, tried before a preset's.
    pub routes: Vec<RouteConfig>,
}

/// A ready-made route tree (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Distributed,
    #[serde(alias = "centralized")]
    Centralised,
    Collegial,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Distributed => "distributed",
            Preset::Centralised => "centralised",
            Preset::Collegial => "collegial",
        }
    }

    /// The root topic when the config sets none: where the preset sends alerts no team
    /// route takes.
    pub fn default_topic(self) -> &'static str {
        match self {
            Preset::Distributed => DEFAULT_TOPIC,
            Preset::Centralised => "signals.alerts.social",
            Preset::Collegial => "signals.alerts.hub",
        }
    }
}

/// The root topic without a preset: one topic of notifications for everyone.
/// (`signals.alerts` carries every alert message, unfiltered, beside it.)
const DEFAULT_TOPIC: &str = "signals.notifications";

/// A team that presets route to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Also the value of the [`LABEL_TEAM`] label that names the team.
    pub name: String,
    /// The team's spoke; defaults to `signals.alerts.<name>`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Catalog ids of the actors the team owns.
    #[serde(default)]
    pub actors: Vec<String>,
    /// Kinds of actor the team owns.
    #[serde(default)]
    pub actor_kinds: Vec<ActorKind>,
}

impl TeamConfig {
    pub fn spoke(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("signals.alerts.{}", self.name))
    }
}

/// A route of the tree (the root is [`RoutingConfig`] itself).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Label → the exact value it must have.
    #[serde(rename = "match")]
    pub match_labels: BTreeMap<String, String>,
    /// Label → the values it may have.
    pub match_any: BTreeMap<String, Vec<String>>,
    /// The [`LABEL_ACTOR_KIND`] label must be this kind.
    pub actor_kind: Option<ActorKind>,
    /// The alert's severity must be at least this.
    pub severity: Option<Severity>,
    /// The [`LABEL_SOURCE`] label must be this.
    pub source: Option<String>,
    /// Where matching alerts go when no child matches; defaults to the parent's topic.
    pub topic: Option<String>,
    /// After matching, go on trying the following siblings.
    #[serde(rename = "continue")]
    pub continue_matching: bool,
    pub routes: Vec<RouteConfig>,
}

/// A routing setting that cannot be used; `field` is its path, e.g.
/// `routing.routes[1].routes[0].topic`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RoutingError {
    pub field: String,
    pub problem: String,
}

fn invalid(field: String, problem: impl Into<String>) -> RoutingError {
    RoutingError {
        field,
        problem: problem.into(),
    }
}

impl RoutingConfig {
    /// Checks every route and team; the error names the first unusable field.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if let Some(topic) = &self.topic {
            check_topic(topic, "routing.topic".into())?;
        }
        let mut names: Vec<&str> = Vec::with_capacity(self.teams.len());
        for (index, team) in self.teams.iter().enumerate() {
            let at = |field: &str| format!("routing.teams[{index}].{field}");
            if team.name.trim().is_empty() {
                return Err(invalid(at("name"), "empty team name"));
            }
            if names.contains(&team.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("duplicate team {:?}", team.name),
                ));
            }
            names.push(&team.name);
            let topic_field = if team.topic.is_some() {
                "topic"
            } else {
                "name"
            };
            check_topic(&team.spoke(), at(topic_field))?;
            for (position, actor) in team.actors.iter().enumerate() {
                if actor.trim().is_empty() {
                    return Err(invalid(
                        at(&format!("actors[{position}]")),
                        "empty actor id",
                    ));
                }
            }
        }
        if let Some(preset @ (Preset::Distributed | Preset::Collegial)) = self.preset {
            if self.teams.is_empty() {
                return Err(invalid(
                    "routing.teams".into(),
                    format!("preset {:?} needs at least one team", preset.as_str()),
                ));
            }
        }
        for (index, route) in self.routes.iter().enumerate() {
            validate_route(route, &format!("routing.routes[{index}]"))?;
        }
        Ok(())
    }

    /// The whole tree as plain routes: the root, with the written routes followed by the
    /// preset's. The root's `topic` is always set.
    pub fn expand(&self) -> RouteConfig {
        let root_topic = match (&self.topic, self.preset) {
            (Some(topic), _) => topic.clone(),
            (None, Some(preset)) => preset.default_topic().to_owned(),
            (None, None) => DEFAULT_TOPIC.to_owned(),
        };
        let mut routes = self.routes.clone();
        if let Some(preset) = self.preset {
            routes.extend(self.preset_routes(preset, &root_topic));
        }
        RouteConfig {
            topic: Some(root_topic),
            routes,
            ..RouteConfig::default()
        }
    }

    fn preset_routes(&self, preset: Preset, hub: &str) -> Vec<RouteConfig> {
        if preset == Preset::Centralised {
            return Vec::new();
        }
        // A `team` label names the one owner: first, and never shared.
        let mut routes: Vec<RouteConfig> = self
            .teams
            .iter()
            .map(|team| label_route(LABEL_TEAM, &team.name, team.spoke(), false))
            .collect();
        let mut by_actor: BTreeMap<&str, Vec<&TeamConfig>> = BTreeMap::new();
        let mut by_kind: BTreeMap<ActorKind, Vec<&TeamConfig>> = BTreeMap::new();
        for team in &self.teams {
            for actor in &team.actors {
                add_owner(by_actor.entry(actor).or_default(), team);
            }
            for kind in &team.actor_kinds {
                add_owner(by_kind.entry(*kind).or_default(), team);
            }
        }
        // Actors before kinds: a team listing an actor owns it whatever its kind.
        let owned = by_actor
            .into_iter()
            .map(|(actor, owners)| (LABEL_ACTOR, actor, owners))
            .chain(
                by_kind
                    .into_iter()
                    .map(|(kind, owners)| (LABEL_ACTOR_KIND, kind.as_str(), owners)),
            );
        for (label, value, owners) in owned {
            let topics = match (preset, owners.as_slice()) {
                (Preset::Collegial, [owner]) => vec![owner.spoke()],
                (Preset::Collegial, _) => vec![hub.to_owned()],
                _ => owners.iter().map(|owner| owner.spoke()).collect(),
            };
            // Every owner's route but the last continues, so the alert reaches them all
            // and then stops.
            let last = topics.len() - 1;
            routes.extend(
                topics
                    .into_iter()
                    .enumerate()
                    .map(|(i, topic)| label_route(label, value, topic, i < last)),
            );
        }
        routes
    }
}

/// Adds `team` to the owners of an actor or kind, once even if the team lists it twice.
fn add_owner<'t>(owners: &mut Vec<&'t TeamConfig>, team: &'t TeamConfig) {
    if !owners.iter().any(|owner| owner.name == team.name) {
        owners.push(team);
    }
}

fn label_route(label: &str, value: &str, topic: String, continue_matching: bool) -> RouteConfig {
    RouteConfig {
        match_labels: BTreeMap::from([(label.to_owned(), value.to_owned())]),
        topic: Some(topic),
        continue_matching,
        ..RouteConfig::default()
    }
}

fn validate_route(route: &RouteConfig, path: &str) -> Result<(), RoutingError> {
    for (label, value) in &route.match_labels {
        if label.trim().is_empty() {
            return Err(invalid(format!("{path}.match"), "empty label name"));
        }
        if value.is_empty() {
            return Err(invalid(format!("{path}.match.{label}"), "empty value"));
        }
    }
    for (label, values) in &route.match_any {
        if label.trim().is_empty() {
            return Err(invalid(format!("{path}.match_any"), "empty label name"));
        }
        if values.is_empty() {
            return Err(invalid(
                format!("{path}.match_any.{label}"),
                "empty list: the route could never match",
            ));
        }
    }
    if route
        .source
        .as_ref()
        .is_some_and(|source| source.is_empty())
    {
        return Err(invalid(format!("{path}.source"), "empty source"));
    }
    if let Some(topic) = &route.topic {
        check_topic(topic, format!("{path}.topic"))?;
    }
    for (index, child) in route.routes.iter().enumerate() {
        validate_route(child, &format!("{path}.routes[{index}]"))?;
    }
    Ok(())
}

/// A topic name Kafka accepts: 1 to 249 of ASCII letters, digits, `.`, `_` and `-`.
fn check_topic(topic: &str, field: String) -> Result<(), RoutingError> {
    if topic.is_empty() {
        return Err(invalid(field, "empty topic name"));
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.len() > 249 || !topic.chars().all(legal) || topic == "." || topic == ".." {
        return Err(invalid(
            field,
            format!(
                "invalid topic name {topic:?}: Kafka takes 1 to 249 ASCII letters, digits, '.', '_' and '-'"
            ),
        ));
    }
    Ok(())
}

/// What routing reads of an alert.
#[derive(Debug, Clone, Copy)]
pub struct Routable<'a> {
    pub severity: Severity,
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Alert> for Routable<'a> {
    fn from(alert: &'a Alert) -> Self {
        Routable {
            severity: alert.severity,
            labels: &alert.labels,
        }
    }
}

/// The validated, expanded route tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Router {
    root: Route,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Route {
    matchers: Vec<Matcher>,
    topic: String,
    continue_matching: bool,
    routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Matcher {
    Equals { label: String, value: String },
    AnyOf { label: String, values: Vec<String> },
    AtLeast(Severity),
}

impl Matcher {
    fn matches(&self, alert: &Routable<'_>) -> bool {
        match self {
            Matcher::Equals { label, value } => alert.labels.get(label) == Some(value),
            Matcher::AnyOf { label, values } => alert
                .labels
                .get(label)
                .is_some_and(|value| values.contains(value)),
            Matcher::AtLeast(severity) => alert.severity >= *severity,
        }
    }
}

impl Route {
    fn compile(config: &RouteConfig, parent_topic: &str) -> Route {
        let equals = |label: &str, value: &str| Matcher::Equals {
            label: label.to_owned(),
            value: value.to_owned(),
        };
        let mut matchers: Vec<Matcher> = config
            .match_labels
            .iter()
            .map(|(label, value)| equals(label, value))
            .collect();
        matchers.extend(
            config
                .match_any
                .iter()
                .map(|(label, values)| Matcher::AnyOf {
                    label: label.clone(),
                    values: values.clone(),
                }),
        );
        matchers.extend(
            config
                .actor_kind
                .map(|kind| equals(LABEL_ACTOR_KIND, kind.as_str())),
        );
        matchers.extend(config.source.as_deref().map(|s| equals(LABEL_SOURCE, s)));
        matchers.extend(config.severity.map(Matcher::AtLeast));
        let topic = config.topic.as_deref().unwrap_or(parent_topic).to_owned();
        Route {
            matchers,
            continue_matching: config.continue_matching,
            routes: config
                .routes
                .iter()
                .map(|child| Route::compile(child, &topic))
                .collect(),
            topic,
        }
    }

    fn matches(&self, alert: &Routable<'_>) -> bool {
        self.matchers.iter().all(|matcher| matcher.matches(alert))
    }

    /// Adds this route's topic and its descendants' to `out`, each once.
    fn all_topics<'r>(&'r self, out: &mut Vec<&'r str>) {
        if !out.contains(&self.topic.as_str()) {
            out.push(&self.topic);
        }
        for child in &self.routes {
            child.all_topics(out);
        }
    }

    /// Adds the topics of this (matching) route to `out`.
    fn collect<'r>(&'r self, alert: &Routable<'_>, out: &mut Vec<&'r str>) {
        let mut any_child = false;
        for child in self.routes.iter().filter(|child| child.matches(alert)) {
            any_child = true;
            child.collect(alert, out);
            if !child.continue_matching {
                break;
            }
        }
        if !any_child && !out.contains(&self.topic.as_str()) {
            out.push(&self.topic);
        }
    }
}

impl Router {
    /// Validates `config` and builds its tree.
    pub fn new(config: &RoutingConfig) -> Result<Router, RoutingError> {
        config.validate()?;
        // The root has a topic after expansion, so nothing is inherited from above it.
        Ok(Router {
            root: Route::compile(&config.expand(), ""),
        })
    }

    /// The distinct topics `alert` goes to, in the order the tree reaches them; never empty.
    pub fn topics<'a>(&self, alert: impl Into<Routable<'a>>) -> Vec<&str> {
        let mut topics = Vec::new();
        self.root.collect(&alert.into(), &mut topics);
        topics
    }

    /// Every topic the tree can route to (to create them at start), each once.
    pub fn destinations(&self) -> Vec<&str> {
        let mut topics = Vec::new();
        self.root.all_topics(&mut topics);
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type LabelPairs = &'static [(&'static str, &'static str)];

    /// An alert's routable view from `label=value` pairs.
    struct Labels(BTreeMap<String, String>);

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    impl Labels {
        fn with(&self, severity: Severity) -> Routable<'_> {
            Routable {
                severity,
                labels: &self.0,
            }
        }

        fn warning(&self) -> Routable<'_> {
            self.with(Severity::Warning)
        }
    }

    fn router(config: &RoutingConfig) -> Router {
        Router::new(config).unwrap()
    }

    fn route(topic: &str) -> RouteConfig {
        RouteConfig {
            topic: Some(topic.into()),
            ..RouteConfig::default()
        }
    }

    fn team(name: &str, actors: &[&str], actor_kinds: &[ActorKind]) -> TeamConfig {
        TeamConfig {
            name: name.into(),
            topic: None,
            actors: actors.iter().map(|a| (*a).to_owned()).collect(),
            actor_kinds: actor_kinds.to_vec(),
        }
    }

    /// The teams of the module doc's example.
    fn teams() -> Vec<TeamConfig> {
        vec![
            team("marketing", &[], &[ActorKind::OwnBrand, ActorKind::Product]),
            team("purchasing", &["acme-rocket"], &[ActorKind::Supplier]),
            team("sales", &[], &[ActorKind::Customer, ActorKind::Supplier]),
        ]
    }

    fn preset(preset: Preset) -> RoutingConfig {
        RoutingConfig {
            preset: Some(preset),
            teams: teams(),
            ..RoutingConfig::default()
        }
    }

    fn owned(label: &str, value: &str, topic: &str, continue_matching: bool) -> RouteConfig {
        label_route(label, value, topic.into(), continue_matching)
    }

    #[test]
    fn no_config_sends_everything_to_signals_notifications() {
        let r = router(&RoutingConfig::default());
        assert_eq!(r.topics(labels(&[]).warning()), ["signals.notifications"]);
        assert_eq!(r.destinations(), ["signals.notifications"]);
    }

    #[test]
    fn parses_the_documented_example() {
        let config: RoutingConfig = serde_json::from_value(serde_json::json!({
            "topic": "signals.notifications",
            "routes": [
                {"actor_kind": "competitor", "topic": "signals.alerts.strategy"},
                {"severity": "critical", "match_any": {"source": ["x", "reddit"]},
                 "topic": "signals.alerts.oncall", "continue": true},
                {"match": {"team": "support"}, "topic": "signals.alerts.support"}
            ]
        }))
        .unwrap();
        assert!(config.routes[1].continue_matching);
        let r = router(&config);
        assert_eq!(
            r.destinations(),
            [
                "signals.notifications",
                "signals.alerts.strategy",
                "signals.alerts.oncall",
                "signals.alerts.support"
            ]
        );
        let critical_support = labels(&[("source", "x"), ("team", "support")]);
        assert_eq!(
            r.topics(critical_support.with(Severity::Critical)),
            ["signals.alerts.oncall", "signals.alerts.support"]
        );
        assert_eq!(
            r.topics(critical_support.warning()),
            ["signals.alerts.support"]
        );
        assert_eq!(
            r.topics(labels(&[("actor_kind", "competitor"), ("team", "support")]).warning()),
            ["signals.alerts.strategy"],
            "first match wins"
        );
        assert_eq!(
            r.topics(labels(&[("source", "rss")]).with(Severity::Critical)),
            ["signals.notifications"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<RoutingConfig>(serde_json::json!({
            "routes": [{"mach": {"team": "x"}}]
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `mach`"), "{err}");
        let err = serde_json::from_value::<RoutingConfig>(serde_json::json!({
            "preset": "hierarchical"
        }))
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `hierarchical`"),
            "{err}"
        );
    }

    #[test]
    fn first_matching_child_wins_unless_it_continues() {
        let mut config = RoutingConfig {
            topic: Some("root".into()),
            routes: vec![
                RouteConfig {
                    source: Some("x".into()),
                    ..route("from-x")
                },
                RouteConfig {
                    severity: Some(Severity::Warning),
                    ..route("warnings")
                },
            ],
            ..RoutingConfig::default()
        };
        let from_x = labels(&[("source", "x")]);
        assert_eq!(router(&config).topics(from_x.warning()), ["from-x"]);
        assert_eq!(
            router(&config).topics(from_x.with(Severity::Info)),
            ["from-x"]
        );
        assert_eq!(
            router(&config).topics(labels(&[]).with(Severity::Critical)),
            ["warnings"],
            "severity is a minimum"
        );
        assert_eq!(
            router(&config).topics(labels(&[]).with(Severity::Info)),
            ["root"]
        );
        config.routes[0].continue_matching = true;
        assert_eq!(
            router(&config).topics(from_x.warning()),
            ["from-x", "warnings"]
        );
        assert_eq!(
            router(&config).topics(from_x.with(Severity::Info)),
            ["from-x"],
            "continuing finds no other match"
        );
    }

    #[test]
    fn nested_routes_inherit_the_parent_topic_and_fall_back_to_it() {
        let config = RoutingConfig {
            routes: vec![RouteConfig {
                actor_kind: Some(ActorKind::Competitor),
                routes: vec![
                    RouteConfig {
                        severity: Some(Severity::Critical),
                        ..route("strategy.urgent")
                    },
                    RouteConfig {
                        match_any: BTreeMap::from([(
                            "actor".to_owned(),
                            vec!["globex".to_owned(), "initech".to_owned()],
                        )]),
                        ..RouteConfig::default()
                    },
                ],
                ..route("strategy")
            }],
            ..RoutingConfig::default()
        };
        let r = router(&config);
        let globex = labels(&[("actor_kind", "competitor"), ("actor", "globex")]);
        let hooli = labels(&[("actor_kind", "competitor"), ("actor", "hooli")]);
        assert_eq!(
            r.topics(globex.with(Severity::Critical)),
            ["strategy.urgent"]
        );
        assert_eq!(r.topics(globex.warning()), ["strategy"], "inherited topic");
        assert_eq!(r.topics(hooli.warning()), ["strategy"], "no child matched");
        assert_eq!(
            r.topics(labels(&[("actor", "globex")]).warning()),
            ["signals.notifications"],
            "a missing label matches nothing"
        );
    }

    #[test]
    fn all_matchers_of_a_route_must_match() {
        let config = RoutingConfig {
            routes: vec![RouteConfig {
                match_labels: BTreeMap::from([("rule".to_owned(), "volume".to_owned())]),
                actor_kind: Some(ActorKind::OwnBrand),
                source: Some("x".into()),
                ..route("brand-volume-x")
            }],
            ..RoutingConfig::default()
        };
        let r = router(&config);
        let all = [
            ("rule", "volume"),
            ("actor_kind", "own_brand"),
            ("source", "x"),
        ];
        assert_eq!(r.topics(labels(&all).warning()), ["brand-volume-x"]);
        for missing in 0..all.len() {
            let mut partial = all.to_vec();
            partial.remove(missing);
            assert_eq!(
                r.topics(labels(&partial).warning()),
                ["signals.notifications"],
                "{partial:?}"
            );
        }
        assert_eq!(
            r.topics(labels(&[("rule", "Volume"), all[1], all[2]]).warning()),
            ["signals.notifications"],
            "values are exact"
        );
    }

    #[test]
    fn a_topic_reached_twice_is_listed_once() {
        let config = RoutingConfig {
            routes: vec![
                RouteConfig {
                    continue_matching: true,
                    ..route("team")
                },
                RouteConfig {
                    continue_matching: true,
                    routes: vec![route("team")],
                    ..route("other")
                },
                route("team"),
            ],
            ..RoutingConfig::default()
        };
        assert_eq!(router(&config).topics(labels(&[]).warning()), ["team"]);
    }

    #[test]
    fn routes_a_model_alert_by_its_labels_and_severity() {
        let mut alert: Alert = serde_json::from_value(serde_json::json!({
            "id": "trend:word:recall", "status": "firing", "severity": "critical",
            "title": "t", "summary": "s", "cause": "trend",
            "labels": {"actor_kind": "competitor"}, "starts_at": 0, "updated_at": 0
        }))
        .unwrap();
        let config = RoutingConfig {
            routes: vec![RouteConfig {
                actor_kind: Some(ActorKind::Competitor),
                severity: Some(Severity::Critical),
                ..route("strategy")
            }],
            ..RoutingConfig::default()
        };
        let r = router(&config);
        assert_eq!(r.topics(&alert), ["strategy"]);
        alert.severity = Severity::Warning;
        assert_eq!(r.topics(&alert), ["signals.notifications"]);
    }

    #[test]
    fn centralised_sends_everything_to_the_social_team() {
        let config: RoutingConfig = serde_json::from_value(serde_json::json!({
            "preset": "centralized"
        }))
        .unwrap();
        assert_eq!(config.preset, Some(Preset::Centralised), "alias");
        assert_eq!(config.expand(), route("signals.alerts.social"));
        let r = router(&preset(Preset::Centralised));
        for alert in [
            labels(&[("team", "sales")]),
            labels(&[("actor_kind", "own_brand")]),
            labels(&[]),
        ] {
            assert_eq!(r.topics(alert.warning()), ["signals.alerts.social"]);
        }
    }

    #[test]
    fn distributed_expands_to_every_owning_team() {
        assert_eq!(
            preset(Preset::Distributed).expand().routes,
            [
                owned("team", "marketing", "signals.alerts.marketing", false),
                owned("team", "purchasing", "signals.alerts.purchasing", false),
                owned("team", "sales", "signals.alerts.sales", false),
                owned("actor", "acme-rocket", "signals.alerts.purchasing", false),
                owned("actor_kind", "own_brand", "signals.alerts.marketing", false),
                owned("actor_kind", "product", "signals.alerts.marketing", false),
                owned("actor_kind", "customer", "signals.alerts.sales", false),
                owned("actor_kind", "supplier", "signals.alerts.purchasing", true),
                owned("actor_kind", "supplier", "signals.alerts.sales", false),
            ]
        );
        let r = router(&preset(Preset::Distributed));
        let cases: [(LabelPairs, &[&str]); 6] = [
            (&[("actor_kind", "product")], &["signals.alerts.marketing"]),
            (
                &[("actor_kind", "supplier")],
                &["signals.alerts.purchasing", "signals.alerts.sales"],
            ),
            (
                &[("actor", "acme-rocket"), ("actor_kind", "product")],
                &["signals.alerts.purchasing"],
            ),
            (
                &[("team", "sales"), ("actor_kind", "product")],
                &["signals.alerts.sales"],
            ),
            (&[("actor_kind", "competitor")], &["signals.notifications"]),
            (&[("team", "legal")], &["signals.notifications"]),
        ];
        for (alert, expected) in cases {
            assert_eq!(r.topics(labels(alert).warning()), expected, "{alert:?}");
        }
    }

    #[test]
    fn collegial_sends_single_owner_alerts_to_spokes_and_the_rest_to_the_hub() {
        let expanded = preset(Preset::Collegial).expand();
        assert_eq!(expanded.topic.as_deref(), Some("signals.alerts.hub"));
        assert_eq!(
            expanded.routes,
            [
                owned("team", "marketing", "signals.alerts.marketing", false),
                owned("team", "purchasing", "signals.alerts.purchasing", false),
                owned("team", "sales", "signals.alerts.sales", false),
                owned("actor", "acme-rocket", "signals.alerts.purchasing", false),
                owned("actor_kind", "own_brand", "signals.alerts.marketing", false),
                owned("actor_kind", "product", "signals.alerts.marketing", false),
                owned("actor_kind", "customer", "signals.alerts.sales", false),
                owned("actor_kind", "supplier", "signals.alerts.hub", false),
            ]
        );
        let r = router(&preset(Preset::Collegial));
        let cases: [(LabelPairs, &str); 6] = [
            (&[("actor_kind", "product")], "signals.alerts.marketing"),
            (&[("actor_kind", "supplier")], "signals.alerts.hub"),
            (
                &[("actor", "acme-rocket"), ("actor_kind", "product")],
                "signals.alerts.purchasing",
            ),
            (
                &[("team", "sales"), ("actor_kind", "supplier")],
                "signals.alerts.sales",
            ),
            (&[("actor_kind", "competitor")], "signals.alerts.hub"),
            (&[], "signals.alerts.hub"),
        ];
        for (alert, expected) in cases {
            assert_eq!(r.topics(labels(alert).warning()), [expected], "{alert:?}");
        }
    }

    #[test]
    fn an_actor_listed_by_several_teams_is_shared() {
        let mut config = preset(Preset::Collegial);
        config.teams[0].actors.push("acme-rocket".into());
        config.teams[0].actors.push("acme-rocket".into());
        let rocket = labels(&[("actor", "acme-rocket"), ("actor_kind", "product")]);
        assert_eq!(
            router(&config).topics(rocket.warning()),
            ["signals.alerts.hub"]
        );
        config.preset = Some(Preset::Distributed);
        assert_eq!(
            router(&config).topics(rocket.warning()),
            ["signals.alerts.marketing", "signals.alerts.purchasing"],
            "listed twice by one team: still one route per team"
        );
    }

    #[test]
    fn written_routes_and_topics_come_before_the_preset() {
        let mut config = preset(Preset::Collegial);
        config.topic = Some("signals.alerts.all-hands".into());
        config.teams[2].topic = Some("crm.alerts".into());
        config.routes = vec![RouteConfig {
            severity: Some(Severity::Critical),
            continue_matching: true,
            ..route("oncall")
        }];
        let r = router(&config);
        let customer = labels(&[("actor_kind", "customer")]);
        assert_eq!(r.topics(customer.warning()), ["crm.alerts"]);
        assert_eq!(
            r.topics(customer.with(Severity::Critical)),
            ["oncall", "crm.alerts"]
        );
        assert_eq!(
            r.topics(labels(&[]).warning()),
            ["signals.alerts.all-hands"]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let nested = |topic: &str| RoutingConfig {
            routes: vec![
                route("a"),
                RouteConfig {
                    routes: vec![route(topic)],
                    ..route("b")
                },
            ],
            ..RoutingConfig::default()
        };
        let with_route = |route: RouteConfig| RoutingConfig {
            routes: vec![route],
            ..RoutingConfig::default()
        };
        let with_teams = |teams: Vec<TeamConfig>| RoutingConfig {
            teams,
            ..preset(Preset::Distributed)
        };
        let cases = [
            (
                nested(""),
                "routing.routes[1].routes[0].topic: empty topic name",
            ),
            (
                nested("alerts for sales"),
                r#"routing.routes[1].routes[0].topic: invalid topic name "alerts for sales": Kafka takes 1 to 249 ASCII letters, digits, '.', '_' and '-'"#,
            ),
            (
                RoutingConfig {
                    topic: Some(String::new()),
                    ..RoutingConfig::default()
                },
                "routing.topic: empty topic name",
            ),
            (
                with_route(RouteConfig {
                    match_labels: BTreeMap::from([(String::new(), "x".to_owned())]),
                    ..route("t")
                }),
                "routing.routes[0].match: empty label name",
            ),
            (
                with_route(RouteConfig {
                    match_labels: BTreeMap::from([("team".to_owned(), String::new())]),
                    ..route("t")
                }),
                "routing.routes[0].match.team: empty value",
            ),
            (
                with_route(RouteConfig {
                    match_any: BTreeMap::from([(" ".to_owned(), vec!["x".to_owned()])]),
                    ..route("t")
                }),
                "routing.routes[0].match_any: empty label name",
            ),
            (
                with_route(RouteConfig {
                    match_any: BTreeMap::from([("source".to_owned(), Vec::new())]),
                    ..route("t")
                }),
                "routing.routes[0].match_any.source: empty list: the route could never match",
            ),
            (
                with_route(RouteConfig {
                    source: Some(String::new()),
                    ..route("t")
                }),
                "routing.routes[0].source: empty source",
            ),
            (
                with_teams(vec![team("", &[], &[])]),
                "routing.teams[0].name: empty team name",
            ),
            (
                with_teams(vec![team("sales", &[], &[]), team("sales", &[], &[])]),
                r#"routing.teams[1].name: duplicate team "sales""#,
            ),
            (
                with_teams(vec![team("après-vente", &[], &[])]),
                r#"routing.teams[0].name: invalid topic name "signals.alerts.après-vente": Kafka takes 1 to 249 ASCII letters, digits, '.', '_' and '-'"#,
            ),
            (
                with_teams(vec![TeamConfig {
                    topic: Some(String::new()),
                    ..team("sales", &[], &[])
                }]),
                "routing.teams[0].topic: empty topic name",
            ),
            (
                with_teams(vec![team("sales", &["acme", ""], &[])]),
                "routing.teams[0].actors[1]: empty actor id",
            ),
            (
                with_teams(Vec::new()),
                r#"routing.teams: preset "distributed" needs at least one team"#,
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(Router::new(&config).unwrap_err().to_string(), expected);
        }
        let mut collegial = preset(Preset::Collegial);
        collegial.teams.clear();
        assert_eq!(
            Router::new(&collegial).unwrap_err().to_string(),
            r#"routing.teams: preset "collegial" needs at least one team"#
        );
        let mut long = "t".repeat(249);
        assert!(check_topic(&long, "x".into()).is_ok());
        long.push('t');
        assert!(check_topic(&long, "x".into()).is_err());
        assert!(check_topic("..", "x".into()).is_err());
        assert!(
            Router::new(&RoutingConfig {
                teams: Vec::new(),
                ..preset(Preset::Centralised)
            })
            .is_ok(),
            "centralised needs no team"
        );
    }
}
