// The monitor page's script: polls /monitor/state every EVERY ms and draws
// it. Every figure and name, table keys above all (they are user input),
// enters the page as text (textContent, append of strings) or as an
// attribute value (setAttribute); no markup is ever built from data.
// When the worker does not answer (a rolling restart), the page keeps the
// last data, says it is stale, and tries again.
'use strict';
(function () {
  const STATE = '/monitor/state';
  const EVERY = 2000;
  const TIMEOUT = 5000;
  // Rows of partitions no longer held here stay, marked, this long.
  const KEEP_GONE = 60000;
  const SVG = 'http://www.w3.org/2000/svg';
  const STATES = ['processing', 'recovering', 'standby'];

  let lastAt = null;
  const rows = new Map(); // "state/partition" -> {p, seenAt, gone}

  function put(node, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) node.setAttribute(k, String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null) continue;
      node.append(typeof kid === 'object' ? kid : String(kid)); // a string becomes a text node
    }
    return node;
  }
  const el = (tag, attrs, ...kids) => put(document.createElement(tag), attrs, kids);
  const svg = (tag, attrs, ...kids) => put(document.createElementNS(SVG, tag), attrs, kids);
  const $ = (id) => document.getElementById(id);
  const fill = (id, ...kids) => $(id).replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined));

  const num = (n) => (n === undefined || n === null || n < 0 ? '–' : Number(n).toLocaleString('en-US'));
  const time = (s) => (s ? new Date(s).toLocaleTimeString('en-GB') : '–');
  function dur(ms) {
    if (ms === undefined || ms === null || ms < 0) return 'unknown';
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
    return Math.round(ms / 60000) + ' min';
  }
  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + units[i];
  }
  // Only http(s) URLs become links; anything else stays text.
  function link(url) {
    if (/^https?:\/\/[^\s]+$/i.test(url || '')) return el('a', { href: url, class: 'mono' }, url);
    return el('span', { class: 'mono' }, url || '(none advertised)');
  }

  function renderGroup(s) {
    const g = s.group;
    const state = !g.joined ? ['joining', 'warn'] : g.rebalancing ? ['rebalancing', 'warn'] : ['stable', 'good'];
    const ready = g.ready ? el('span', { class: 'good' }, 'ready') : el('span', { class: 'warn' }, 'not ready: ' + (g.reason || ''));
    const fact = (k, ...v) => [el('dt', null, k), el('dd', null, ...v)];
    // A member list that disagrees with what this worker holds lags the
    // group (a rebalance under way): shown, but marked stale.
    const membersNote = g.members_error ? ' (stale: ' + g.members_error + ')' :
      g.members_stale ? ' (stale: the group list does not match the partitions held here yet)' : null;
    fill('group',
      fact('group', el('span', { class: 'mono' }, g.name)),
      fact('generation', num(g.generation)),
      fact('state', el('span', { class: state[1] }, state[0]), ' · ', ready),
      fact('members', num(g.members.length), membersNote ? el('span', { class: 'warn' }, membersNote) : null));
    if (g.members_error) return; // keep the members shown last
    const rowClass = (m) => [m.self && 'self', g.members_stale && 'stale'].filter(Boolean).join(' ') || null;
    fill('members-body', g.members.map((m) => el('tr', { class: rowClass(m) },
      el('td', { class: 'mono', title: 'client id: ' + m.client_id }, m.id, m.self ? ' (this worker)' : ''),
      el('td', null, link(m.url)),
      el('td', { class: 'mono' }, m.host),
      el('td', { class: 'mono' }, m.partitions.join(', ') || 'none'))));
  }

  function recoveryCell(r) {
    if (!r) return el('td', { class: 'muted' }, '–');
    const bar = el('span');
    bar.style.width = Math.round(Math.max(0, Math.min(1, r.done)) * 100) + '%'; // CSSOM, not a style attribute
    const left = r.remaining < 0 ? 'measuring' : num(r.remaining) + ' of ' + num(r.total) + ' left';
    const eta = r.eta_seconds < 0 ? 'ETA unknown' : 'ETA ' + dur(r.eta_seconds * 1000);
    return el('td', null, el('span', { class: 'progress', role: 'progressbar', 'aria-valuenow': Math.round(r.done * 100) }, bar),
      el('span', { class: 'eta' }, Math.round(r.done * 100) + '% · ' + left + ' · ' + eta));
  }

  function partitionRow(p, gone) {
    const state = STATES.includes(p.state) ? p.state : 'unknown';
    const lag = p.lag;
    const lagStale = lag && lag.stale ? ' (stale sample)' : '';
    let note = [p.stalled && 'cannot commit: ' + p.stalled, p.waiting && 'waits: ' + p.waiting].filter(Boolean).join('; ');
    if (p.standby_behind) {
      note = Object.entries(p.standby_behind).map(([t, n]) => t + ' ' + num(n) + ' behind').join(', ');
    }
    if (gone) note = 'not held here since ' + time(gone) + ' (stale)';
    if (lag && !gone) note = [note, 'sampled ' + time(lag.sampled_at) + lagStale].filter(Boolean).join('; ');
    return el('tr', { class: gone || (lag && lag.stale) ? 'partition stale' : 'partition', 'data-partition': p.partition, 'data-state': state },
      el('td', { class: 'num' }, num(p.partition)),
      el('td', null, el('span', { class: 'badge ' + (gone ? 'gone' : state) }, state)),
      recoveryCell(gone ? null : p.recovery),
      el('td', { class: 'num' }, lag ? num(lag.records) : '–'),
      el('td', { class: 'num' }, lag ? lag.seconds.toFixed(1) : '–'),
      el('td', { class: 'num mono' }, state === 'standby' ? '–' : num(p.next_offset) + ' / ' + num(p.committed_offset)),
      el('td', { class: 'muted' }, note));
  }

  // Partitions that were held here and no longer are keep their last row,
  // marked stale, for KEEP_GONE.
  function renderPartitions(s, now) {
    const current = new Set();
    for (const p of s.partitions) {
      const key = p.state + '/' + p.partition;
      current.add(key);
      rows.set(key, { p: p, gone: null });
    }
    for (const [key, r] of rows) {
      if (current.has(key)) continue;
      if (!r.gone) r.gone = now;
      if (now - r.gone > KEEP_GONE) rows.delete(key);
    }
    const sorted = [...rows.values()].sort((a, b) => a.p.partition - b.p.partition || a.p.state.localeCompare(b.p.state));
    fill('partitions-body', sorted.length ? sorted.map((r) => partitionRow(r.p, r.gone)) :
      el('tr', null, el('td', { colspan: 7, class: 'muted' }, 'no partitions held here')));
  }

  function renderRebalances(s) {
    const part = (e) => {
      if (e.event === 'released') return 'p' + e.partition + ' released in ' + dur(e.release_ms);
      const un = e.unprocessed_ms === undefined || e.unprocessed_ms === null ? 'unknown' : dur(e.unprocessed_ms);
      return 'p' + e.partition + ' resumed: recovery ' + dur(e.recovery_ms || 0) + ' · unprocessed ' + un + ' · replayed ' +
        num(e.replayed || 0) + ' from ' + (e.copy === 'none' || !e.copy ? 'the changelog' : e.copy === 'local' ? 'the local store' : 'a standby copy');
    };
    fill('rebalances-body', s.rebalances.length ? s.rebalances.map((r, i) => el('tr', { class: 'rebalance' },
      el('td', null, time(r.at)),
      el('td', { class: 'num' }, num(r.generation)),
      el('td', { class: 'num' }, r.stopped_ms !== null ? dur(r.stopped_ms) : i === 0 ? 'in progress' : '–'),
      el('td', null, ...r.partitions.map((e) => el('div', { class: 'mono' }, part(e)))))) :
      el('tr', null, el('td', { colspan: 4, class: 'muted' }, 'none since this worker started')));
  }

  function renderTables(s) {
    fill('tables-body', s.tables.map((t) => el('tr', { class: 'table' },
      el('td', { class: 'mono nowrap' }, t.name, t.error ? el('div', { class: 'warn' }, t.error) : null),
      el('td', null, t.windowed ? ['windowed ' + t.window, el('div', { class: 'muted small' }, 'keys: of the last windows')] : 'plain'),
      el('td', { class: 'num' }, num(t.keys)))));
    fill('store', 'store on disk: ' + bytes(s.store.disk_bytes) + ' · compactions: ' + num(s.store.compactions));
    const l = s.livecheck;
    if (!l.declared) fill('livecheck', el('span', { class: 'muted' }, 'the app declares no livecheck'));
    else if (!l.ran) fill('livecheck', el('span', { class: 'muted' }, 'not run on this worker yet (it runs on the owner of partition 0)'));
    else if (l.ok) fill('livecheck', el('span', { class: 'good' }, 'passed'), ' at ' + time(l.at) + ' in ' + dur(l.took_ms));
    else fill('livecheck', el('span', { class: 'bad' }, 'failed'), ' at ' + time(l.at) + ': ' + (l.error || ''));
  }

  // A grouped bar chart: one group per window, one bar per key.
  function chart(c) {
    const W = 1100, H = 180, left = 56, right = 10, top = 10, bottom = 30;
    const all = c.keys.flatMap((k) => k.counts);
    const hi = Math.max(0, ...all), lo = Math.min(0, ...all);
    const span = hi - lo || 1;
    const y = (v) => top + (hi - v) / span * (H - top - bottom);
    const groupW = (W - left - right) / c.windows.length;
    const barW = Math.max(2, (groupW - 12) / Math.max(1, c.keys.length));
    const plot = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'busiest keys of ' + c.table, class: 'bars' },
      svg('line', { class: 'axis', x1: left, x2: W - right, y1: y(0), y2: y(0) }),
      svg('text', { x: left - 6, y: y(hi) + 4, 'text-anchor': 'end' }, num(hi)),
      svg('text', { x: left - 6, y: y(0) + 4, 'text-anchor': 'end' }, '0'));
    c.windows.forEach((w, i) => {
      const x0 = left + i * groupW + 6;
      plot.append(svg('text', { x: x0 + (groupW - 12) / 2, y: H - 14, 'text-anchor': 'middle' },
        time(w.start) + (i === c.windows.length - 1 ? ' (now)' : '')));
      c.keys.forEach((k, j) => {
        const v = k.counts[i];
        if (!v) return;
        const bar = svg('rect', { class: 'bar c' + (j % 8), x: x0 + j * barW, y: Math.min(y(v), y(0)), width: Math.max(1, barW - 1),
          height: Math.max(1, Math.abs(y(0) - y(v))), 'data-key': k.key });
        bar.append(svg('title', null, k.key + ': ' + num(v)));
        plot.append(bar);
      });
    });
    const legend = el('ul', { class: 'legend' }, c.keys.map((k, j) =>
      el('li', { title: k.key }, el('span', { class: 'swatch c' + (j % 8) }), el('span', { class: 'key mono' }, k.key))));
    return el('div', { class: 'chart', 'data-table': c.table },
      el('h3', null, el('span', { class: 'mono' }, c.table), el('span', { class: 'muted' }, ' · partitions ' + (c.partitions.join(', ') || 'none'))),
      c.keys.length ? [plot, legend] : el('p', { class: 'muted' }, 'no values in the last windows'));
  }

  function renderCharts(s) {
    fill('charts', s.charts.length ? s.charts.map(chart) : el('p', { class: 'muted' }, 'no windowed table with numeric values'));
  }

  function render(s) {
    const now = Date.now();
    fill('self', s.self);
    renderGroup(s);
    renderPartitions(s, now);
    renderRebalances(s);
    renderTables(s);
    renderCharts(s);
  }

  function fresh() {
    document.body.classList.remove('stale');
    fill('status', 'live · updated ' + time(lastAt));
  }

  function stale(err) {
    document.body.classList.add('stale');
    const since = lastAt ? 'showing data from ' + time(lastAt) : 'no data yet';
    fill('status', 'stale: the worker did not answer (' + (err && err.message || err) + '); ' + since + '; retrying');
  }

  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT);
    try {
      const resp = await fetch(STATE, { cache: 'no-store', signal: ctl.signal });
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      const s = await resp.json();
      lastAt = new Date();
      render(s);
      fresh();
    } catch (err) {
      stale(err);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, EVERY);
    }
  }

  // The tables' bodies get ids, so render fills them by id.
  for (const id of ['members', 'partitions', 'rebalances', 'tables']) $(id).tBodies[0].id = id + '-body';
  poll();
})();
