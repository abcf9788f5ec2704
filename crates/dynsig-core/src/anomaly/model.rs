//! Exploration version of the per-series model (to be split).

use crate::model::EpochMs;

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub level_alpha: f64,
    pub scale_alpha: f64,
    pub shift_alpha: f64,
    pub clip: f64,
    pub use_point: f64,
    pub use_shift: f64,
    pub use_novel: f64,
    pub refractory: f64,
    pub refractory_level: f64,
    pub warmup: f64,
    pub calib: f64,
    pub tail_k: f64,
    pub prior: f64,
    pub inhibit: f64,
    pub tail_q: f64,
    pub use_proto: f64,
    pub proto_w: f64,
    pub proto_k: f64,
    pub vigilance: f64,
    pub novel_rate_alpha: f64,
    pub proto_pow: f64,
    pub novel_margin: f64,
    pub novel_h: f64,
    pub novel_lambda: f64,
    pub novel_off: f64,
    pub point_off: f64,
    pub shift_off: f64,
    pub record_rate: f64,
    pub use_season: f64,
    pub season_bins: f64,
    pub season_alpha: f64,
    pub season_gain: f64,
    pub bin_scale: f64,
    pub use_lik: f64,
    pub lik_short: f64,
    pub lik_long: f64,
    pub lik_off: f64,
    pub lik_raw: f64,
    pub final_calib: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            level_alpha: 0.1,
            scale_alpha: 0.01,
            shift_alpha: 0.2,
            clip: 4.0,
            use_point: 1.0,
            use_shift: 1.0,
            use_novel: 1.0,
            refractory: 0.0,
            refractory_level: 4.0,
            warmup: 10.0,
            calib: 1.0,
            tail_k: 3.0,
            prior: 20.0,
            inhibit: 0.0,
            tail_q: 0.02,
            use_proto: 0.0,
            proto_w: 8.0,
            proto_k: 32.0,
            vigilance: 0.1,
            novel_rate_alpha: 0.01,
            proto_pow: 0.0,
            novel_margin: 0.0,
            novel_h: 1e9,
            novel_lambda: 1.0,
            novel_off: 0.0,
            point_off: 0.0,
            shift_off: 0.0,
            record_rate: 0.0,
            use_season: 0.0,
            season_bins: 288.0,
            season_alpha: 0.3,
            season_gain: 0.8,
            bin_scale: 1.0,
            use_lik: 0.0,
            lik_short: 10.0,
            lik_long: 0.0005,
            lik_off: 0.0,
            lik_raw: 0.0,
            final_calib: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub expected: f64,
    pub score: f64,
    pub component: u8,
}

/// Exact rank calibration (exploration only: unbounded memory).
#[derive(Debug, Clone, Default, PartialEq)]
struct Calib {
    hist: Vec<f64>,
}

impl Calib {
    /// -log10 p of t given the past; then records t.
    fn surprise(&mut self, p: &Params, t: f64, param_s: f64) -> f64 {
        let n = self.hist.len() as f64;
        let p_param = 10f64.powf(-param_s);
        let p_emp = if self.hist.len() < 10 {
            p_param
        } else if p.calib >= 2.0 {
            // exponential tail over the (1-q) quantile
            let mut sorted = self.hist.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let k = ((n * p.tail_q).ceil() as usize).max(3).min(sorted.len());
            let u = sorted[sorted.len() - k];
            let excess: f64 = sorted[sorted.len() - k..]
                .iter()
                .map(|h| h - u)
                .sum::<f64>()
                / (k as f64 - 1.0).max(1.0);
            let q = k as f64 / (n + 1.0);
            if t > u {
                q * (-(t - u) / excess.max(1e-9)).exp()
            } else {
                (self.hist.iter().filter(|&&h| h >= t).count() as f64 + 1.0) / (n + 1.0)
            }
        } else {
            let ge = self.hist.iter().filter(|&&h| h >= t).count() as f64;
            let max = self.hist.iter().cloned().fold(0.0, f64::max);
            if ge > 0.0 {
                ge / (n + 1.0)
            } else if max > 0.0 {
                (max / t).powf(p.tail_k) / (n + 1.0)
            } else {
                p_param
            }
        };
        let pr = if n + p.prior > 0.0 {
            (n * p_emp + p.prior * p_param) / (n + p.prior)
        } else {
            p_param
        };
        self.hist.push(t);
        let s = -pr.max(1e-300).log10();
        if p.calib > 0.0 {
            s
        } else {
            param_s
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesModel {
    n: u32,
    level: f64,
    scale: f64,
    shift: f64,
    min: f64,
    max: f64,
    since_detection: u32,
    inhibition: f64,
    c_point: Calib,
    c_shift: Calib,
    c_novel: Calib,
    ring: Vec<f64>,
    protos: Vec<(Vec<f64>, f64)>,
    novel_rate: f64,
    records: f64,
    season: Option<Seasonal>,
    first_ts: i64,
    last_ts: i64,
    step: i64,
    err_flat: f64,
    err_season: f64,
    level_s: f64,
    scale_s: f64,
    lik_ring: Vec<f64>,
    lik_mu: f64,
    lik_var: f64,
    lik_n: f64,
    c_final: Calib,
}

impl SeriesModel {
    pub fn observe(&mut self, p: &Params, ts: EpochMs, x: f64) -> Verdict {
        if self.n == 0 {
            self.level = x;
            self.scale = 0.0;
            self.min = x;
            self.max = x;
            self.n = 1;
            self.since_detection = u32::MAX;
            self.first_ts = ts;
            self.last_ts = ts;
            return Verdict {
                expected: x,
                score: 0.0,
                component: 0,
            };
        }
        // sampling step and seasonal profile
        if self.n == 1 {
            self.step = ts - self.last_ts;
        } else if ts - self.last_ts > 0 {
            self.step = self.step.min(ts - self.last_ts).max(1);
        }
        self.last_ts = ts;
        if p.use_season > 0.0 && self.season.is_none() && self.n >= 8 {
            let mut s = Seasonal::new(86_400_000, self.step, p.season_bins as usize);
            s.dev.iter_mut().for_each(|d| *d = 0.0);
            self.season = Some(s);
            self.level_s = self.level;
        }
        let flat_pred = self.level;
        let mut expected = flat_pred;
        let mut sigma_s = 0.0;
        let mut use_s = false;
        if let Some(s) = &self.season {
            let b = s.bin(ts);
            if ts - self.first_ts >= s.period
                && s.seen[b]
                && self.err_season < p.season_gain * self.err_flat
            {
                expected = self.level_s + s.dev[b];
                sigma_s = s.scale[b];
                use_s = true;
            }
        }
        let r = x - expected;
        let floor = 1e-9 + 1e-6 * expected.abs();
        let sigma = if use_s && p.bin_scale > 0.0 {
            (sigma_s * 1.2533)
                .max(floor)
                .max(0.3 * self.scale_s * 1.2533)
        } else if use_s {
            (self.scale_s * 1.2533).max(floor)
        } else {
            (self.scale * 1.2533).max(floor)
        };
        let z = r / sigma;
        // shift statistic: EW of clipped z
        let zc = z.clamp(-2.0 * p.clip, 2.0 * p.clip);
        self.shift = (1.0 - p.shift_alpha) * self.shift + p.shift_alpha * zc;
        let shift_z = self.shift / (p.shift_alpha / (2.0 - p.shift_alpha)).sqrt();
        let s_point = (self.c_point.surprise(p, z.abs(), surprise(z)) - p.point_off) * p.use_point;
        let s_shift = (self.c_shift.surprise(p, shift_z.abs(), surprise(shift_z)) - p.shift_off)
            * p.use_shift;
        let range = (self.max - self.min).max(floor);
        let beyond = if x > self.max {
            (x - self.max) / range
        } else if x < self.min {
            (self.min - x) / range
        } else {
            0.0
        };
        let e = if x > self.max {
            (x - self.max) / range
        } else if x < self.min {
            (self.min - x) / range
        } else {
            0.0
        };
        let s_novel = if e > p.novel_margin && p.use_novel > 0.0 {
            let n = (self.n as f64).min(p.novel_h);
            let base = if p.record_rate > 0.0 {
                ((n + 1.0) / (self.records + 1.0)).log10()
            } else {
                (n + 1.0).log10()
            };
            base + p.novel_lambda * e / std::f64::consts::LN_10 - p.novel_off
        } else {
            0.0
        };
        let _ = beyond;
        let s_proto = p.use_proto * self.proto(p, x);
        let s_lik = if p.use_lik > 0.0 {
            let e = if p.lik_raw > 0.0 {
                (z.abs() / p.lik_raw).min(1.0)
            } else {
                1.0 - erfc(z.abs() / std::f64::consts::SQRT_2)
            };
            self.lik_ring.push(e);
            if self.lik_ring.len() > p.lik_short as usize {
                self.lik_ring.remove(0);
            }
            let m = self.lik_ring.iter().sum::<f64>() / self.lik_ring.len() as f64;
            let sd = self.lik_var.max(1e-6).sqrt();
            let zl = (m - self.lik_mu) / sd;
            let out = if self.lik_n > 100.0 && zl > 0.0 {
                surprise(zl) - 0.30103 - p.lik_off
            } else {
                0.0
            };
            let a = (1.0 / (self.lik_n + 1.0)).max(p.lik_long);
            let d = m - self.lik_mu;
            self.lik_mu += a * d;
            self.lik_var = (1.0 - a) * (self.lik_var + a * d * d);
            self.lik_n += 1.0;
            out
        } else {
            0.0
        };
        let s_proto = if s_lik > s_proto { s_lik } else { s_proto };
        let (mut s, mut component) = (s_point, 1);
        if s_proto > s {
            s = s_proto;
            component = 4;
        }
        if s_shift > s {
            s = s_shift;
            component = 2;
        }
        if s_novel > s {
            s = s_novel;
            component = 3;
        }
        if p.final_calib > 0.0 {
            let mut q = p.clone();
            q.calib = p.final_calib;
            q.prior = 0.0;
            s = self.c_final.surprise(&q, s, s);
        }
        if (self.n as f64) < p.warmup {
            s = 0.0;
        }
        if (self.since_detection as f64) < p.refractory {
            s = 0.0;
        }
        if s >= p.refractory_level {
            self.since_detection = 0;
        } else {
            self.since_detection = self.since_detection.saturating_add(1);
        }
        if p.inhibit > 0.0 {
            let out = (s - self.inhibition).max(0.0);
            self.inhibition = (self.inhibition * p.inhibit).max(s);
            s = out;
        }
        // updates
        let rc = r.clamp(-p.clip * sigma, p.clip * sigma);
        let rc = if self.scale == 0.0 { r } else { rc };
        self.level += p.level_alpha * rc;
        let a = if self.n < 20 {
            1.0 / self.n as f64
        } else {
            p.scale_alpha
        };
        self.scale += a * (rc.abs() - self.scale);
        let flat_err = (x - flat_pred).abs();
        if let Some(s) = &mut self.season {
            let b = s.bin(ts);
            let pred = self.level_s + if s.seen[b] { s.dev[b] } else { 0.0 };
            let rs = x - pred;
            let sig = (self.scale_s * 1.2533).max(floor);
            let rsc = if self.scale_s == 0.0 {
                rs
            } else {
                rs.clamp(-p.clip * sig, p.clip * sig)
            };
            if ts - self.first_ts >= s.period && s.seen[b] {
                self.err_season += 0.01 * (rs.abs() - self.err_season);
                self.err_flat += 0.01 * (flat_err - self.err_flat);
            }
            // level of the deseasonalised series
            self.level_s += p.level_alpha * 0.2 * rsc;
            let a = 1.0 - (1.0 - p.season_alpha).powf(1.0 / s.per_bin);
            if s.seen[b] {
                s.dev[b] += a * rsc;
                let bs = if s.scale[b] == 0.0 {
                    rsc.abs()
                } else {
                    s.scale[b] + a * (rsc.abs() - s.scale[b])
                };
                s.scale[b] = bs;
            } else {
                s.dev[b] = x - self.level_s;
                s.scale[b] = self.scale_s;
                s.seen[b] = true;
            }
            let a2 = if self.n < 20 {
                1.0 / self.n as f64
            } else {
                p.scale_alpha
            };
            self.scale_s += a2 * (rsc.abs() - self.scale_s);
        }
        if x > self.max || x < self.min {
            self.records += 1.0;
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.n = self.n.saturating_add(1);
        Verdict {
            expected,
            score: s / (1.0 + s),
            component,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Seasonal {
    period: i64,
    dev: Vec<f64>,
    scale: Vec<f64>,
    seen: Vec<bool>,
    per_bin: f64,
}

impl Seasonal {
    fn new(period: i64, step: i64, max_bins: usize) -> Self {
        let bins = ((period / step.max(1)) as usize).clamp(4, max_bins);
        let per_bin = (period as f64 / step.max(1) as f64 / bins as f64).max(1.0);
        Seasonal {
            period,
            dev: vec![0.0; bins],
            scale: vec![0.0; bins],
            seen: vec![false; bins],
            per_bin,
        }
    }
    fn bin(&self, ts: i64) -> usize {
        let phase = ts.rem_euclid(self.period) as f64 / self.period as f64;
        ((phase * self.dev.len() as f64) as usize).min(self.dev.len() - 1)
    }
}

impl SeriesModel {
    fn proto(&mut self, p: &Params, x: f64) -> f64 {
        let w = p.proto_w as usize;
        self.ring.push(x);
        if self.ring.len() > w {
            self.ring.remove(0);
        }
        if self.ring.len() < w {
            return 0.0;
        }
        let range = (self.max.max(x) - self.min.min(x)).max(1e-9);
        let mut best = (f64::INFINITY, usize::MAX);
        for (j, (v, _)) in self.protos.iter().enumerate() {
            let d = v
                .iter()
                .zip(&self.ring)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / (w as f64 * range);
            if d < best.0 {
                best = (d, j);
            }
        }
        let novel = best.0 > p.vigilance;
        let rate = self.novel_rate.max(1e-6);
        let s = if novel {
            let pr = rate * (p.vigilance / best.0).powf(p.proto_pow);
            -pr.log10()
        } else {
            0.0
        };
        self.novel_rate += p.novel_rate_alpha * ((novel as u8 as f64) - self.novel_rate);
        if novel {
            if self.protos.len() < p.proto_k as usize {
                self.protos.push((self.ring.clone(), 1.0));
            } else {
                // replace least used
                let j = (0..self.protos.len())
                    .min_by(|&a, &b| self.protos[a].1.partial_cmp(&self.protos[b].1).unwrap())
                    .unwrap();
                self.protos[j] = (self.ring.clone(), 1.0);
            }
        } else {
            let (v, c) = &mut self.protos[best.1];
            *c += 1.0;
            let lr = 1.0 / c.min(20.0);
            for (a, b) in v.iter_mut().zip(&self.ring) {
                *a += lr * (b - *a);
            }
        }
        for (_, c) in self.protos.iter_mut() {
            *c *= 0.999;
        }
        s
    }
}

/// -log10 of the two-sided normal tail probability of z.
pub fn surprise(z: f64) -> f64 {
    if !z.is_finite() {
        return if z.is_nan() { 0.0 } else { 300.0 };
    }
    let p = erfc(z.abs() / std::f64::consts::SQRT_2);
    if p > 0.0 {
        -p.log10()
    } else {
        300.0
    }
}

pub fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * (-x * x + poly).exp()
}
