// The live dashboard: an EventSource feed of snapshots, drawn with uPlot.
(() => {
  "use strict";
  const root = document.getElementById("dashboard");
  const $ = (id) => document.getElementById(id);
  const KEEP = 150; // points per chart (5 minutes at 2 s)
  const series = { time: [], throughput: [], p50: [], p95: [], p99: [], ttft: [],
                   waiting: [], inFlight: [], errors: [], tokens: [] };

  // Every time on the page is UTC, as in the admin and the logs, and says so:
  // a staff member comparing the two never has to guess an offset.
  const utcTime = (date) => `${date.toISOString().slice(11, 19)} UTC`;
  const hms = (ts) => new Date(ts * 1e3).toISOString().slice(11, 19); // axis ticks: UTC

  function chart(id, lines) {
    const el = $(id);
    return new uPlot({
      width: el.clientWidth || 400, height: 160, legend: { show: true },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      series: [
        { label: "time", value: (u, ts) => (ts === null ? "–" : utcTime(new Date(ts * 1e3))) },
        ...lines.map(([label, stroke]) => ({ label, stroke, width: 2 })),
      ],
      axes: [{ label: "UTC", labelSize: 16, values: (u, splits) => splits.map(hms) }, { size: 50 }],
    }, [[], ...lines.map(() => [])], el);
  }
  const charts = {
    throughput: [chart("chart-throughput", [["req/s", "#2f6fed"]]), ["throughput"]],
    latency: [chart("chart-latency", [["p50", "#1e8e3e"], ["p95", "#e0a800"], ["p99", "#c0392b"]]), ["p50", "p95", "p99"]],
    ttft: [chart("chart-ttft", [["p50", "#7b3fe4"]]), ["ttft"]],
    queue: [chart("chart-queue", [["waiting", "#e0a800"], ["in flight", "#2f6fed"]]), ["waiting", "inFlight"]],
    errors: [chart("chart-errors", [["errors", "#c0392b"]]), ["errors"]],
    tokens: [chart("chart-tokens", [["tokens/s", "#1e8e3e"]]), ["tokens"]],
  };

  const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  // Replace a table body's rows with these cells (text only: no markup from data);
  // a cell {text, href} is a link.
  function rows(id, cells) {
    $(id).replaceChildren(...cells.map((row) => {
      const tr = document.createElement("tr");
      for (const cell of row) {
        const td = document.createElement("td");
        if (typeof cell === "object") {
          const a = document.createElement("a");
          a.href = cell.href; a.textContent = cell.text; td.append(a);
        } else {
          td.textContent = cell;
        }
        tr.append(td);
      }
      return tr;
    }));
  }

  // One chart point from a snapshot, or from a history bucket (no queue: null, a gap).
  function point(stats) {
    const queue = stats.queue ? Object.values(stats.queue).reduce((a, b) => a + b, 0) : null;
    return {
      time: Date.parse(stats.time) / 1000, throughput: stats.throughput,
      p50: stats.latency.p50, p95: stats.latency.p95, p99: stats.latency.p99,
      ttft: stats.first_token_p50, waiting: queue, inFlight: stats.in_flight ?? null,
      errors: stats.error_rate, tokens: stats.tokens_per_second,
    };
  }

  function append(values) {
    for (const [key, value] of Object.entries(values)) {
      series[key].push(value);
      if (series[key].length > KEEP) series[key].shift();
    }
  }

  function push(stats) {
    // A page just opened draws the last minute from the snapshot's history
    // rather than starting empty; later snapshots only add their own point.
    if (series.time.length === 0) (stats.history || []).forEach((bucket) => append(point(bucket)));
    const current = point(stats);
    append(current);
    for (const [plot, keys] of Object.values(charts)) {
      plot.setData([series.time, ...keys.map((k) => series[k])]);
    }
    $("tile-throughput").textContent = fmt(stats.throughput);
    $("tile-latency").textContent = `${fmt(stats.latency.p50)} / ${fmt(stats.latency.p95)} / ${fmt(stats.latency.p99)}`;
    $("tile-ttft").textContent = fmt(stats.first_token_p50, 3);
    $("tile-queue").textContent = `${stats.in_flight} / ${current.waiting}`;
    $("tile-errors").textContent = `${fmt(stats.error_rate * 100, 1)}%`;
    $("tile-tokens").textContent = fmt(stats.tokens_per_second, 1);
    const cache = stats.cache;
    $("tile-cache").textContent = cache.hit_rate === null ? "–" : `${fmt(cache.hit_rate * 100, 1)}%`;
    $("tile-saved").textContent = `${cache.saved_tokens} tokens saved, last minute`;
    rows("tiers", ["high", "normal", "low", "background"].map((tier) => {
      const { waiting: n, wait_p95: p95 } = stats.tiers[tier];
      return [tier, String(n), fmt(p95, 3)];
    }));
    rows("keys", stats.busiest_keys.map((k) => [k.key, String(k.finished), String(k.waiting)]));
    rows("top-keys", stats.top_keys_by_tokens.map((k) =>
      [k.key, String(k.requests), String(k.tokens), fmt(k.cost, 4)]));
    rows("latest", stats.latest.map((r) =>
      [{ text: r.id.slice(0, 8), href: r.url }, r.status, r.backend, utcTime(new Date(r.created_at))]));
    $("updated").textContent = `updated ${utcTime(new Date(stats.time))}`;
    root.dataset.updates = String(Number(root.dataset.updates) + 1);
  }

  window.dashboardDebug = { series }; // what the charts hold (the browser tests read it)

  const feed = new EventSource(root.dataset.feed);
  feed.onopen = () => { $("feed-state").dataset.state = "open"; $("feed-state").textContent = "live"; };
  feed.onerror = () => { $("feed-state").dataset.state = "reconnecting"; $("feed-state").textContent = "reconnecting…"; };
  feed.addEventListener("stats", (event) => push(JSON.parse(event.data)));
})();
