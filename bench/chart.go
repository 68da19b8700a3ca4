package main

import (
	"fmt"
	"math"
	"strings"
)

// chart is a grid of small line panels: a column per varied dimension, a
// row per measured figure, each panel the figure against the dimension's
// values on a logarithmic x axis.
type chart struct {
	title string
	rows  []string // the figure of each row, also its y axis label
	cols  []chartCol
}

// chartCol is one dimension: its values and, per row, the figure at each.
// A figure of 0 or less (not measured) is left out.
type chartCol struct {
	name string
	xs   []float64
	ys   [][]float64 // ys[row][i] is the figure at xs[i]
}

// The chart's layout in pixels.
const (
	chartWidth  = 900
	chartTop    = 56 // the title and the column headings
	chartRowH   = 170
	panelLeft   = 58 // room for the y labels
	panelRight  = 18
	panelTop    = 14
	panelBottom = 40 // room for the x labels
	panelPad    = 22 // between the plot's edge and its first and last x
)

// svg returns the chart as a standalone SVG document.
func (c chart) svg() string {
	var b strings.Builder
	height := chartTop + chartRowH*len(c.rows) + 10
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/>`+"\n", chartWidth, height)
	fmt.Fprintf(&b, `<text x="%d" y="20" text-anchor="middle" font-size="14" font-weight="bold">%s</text>`+"\n", chartWidth/2, esc(c.title))
	colW := 0.0
	if len(c.cols) > 0 {
		colW = float64(chartWidth) / float64(len(c.cols))
	}
	// A row shares its y scale, so its panels compare at a glance.
	his := make([]float64, len(c.rows))
	for _, col := range c.cols {
		for ri := range his {
			if ri < len(col.ys) {
				his[ri] = max(his[ri], maxOf(col.ys[ri]))
			}
		}
	}
	for ci, col := range c.cols {
		x0 := colW * float64(ci)
		fmt.Fprintf(&b, `<text x="%.1f" y="44" text-anchor="middle" font-size="13" font-weight="bold">varying %s</text>`+"\n",
			x0+colW/2, esc(col.name))
		for ri, label := range c.rows {
			y0 := float64(chartTop + chartRowH*ri)
			var ys []float64
			if ri < len(col.ys) {
				ys = col.ys[ri]
			}
			c.panel(&b, x0, y0, colW, niceCeil(his[ri]*1.2), col, label, ys)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// panel draws one figure against one dimension in the box at x0, y0 of
// width w and the row's height, its y axis from 0 to hi.
func (chart) panel(b *strings.Builder, x0, y0, w, hi float64, col chartCol, label string, ys []float64) {
	left, right := x0+panelLeft, x0+w-panelRight
	top, bottom := y0+panelTop, y0+chartRowH-panelBottom
	fmt.Fprintf(b, `<g class="panel" data-x="%s" data-y="%s">`+"\n", esc(col.name), esc(label))
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fafafa" stroke="#999"/>`+"\n",
		left, top, right-left, bottom-top)
	yAt := func(v float64) float64 { return bottom - v/hi*(bottom-top) }
	for _, t := range []float64{0, hi / 2, hi} {
		y := yAt(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, right, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", left-4, y+4, compact(t))
	}
	mid := (top + bottom) / 2
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
		x0+14, mid, x0+14, mid, esc(label))
	xAt := logScale(col.xs, left+panelPad, right-panelPad)
	for _, x := range col.xs {
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">%s</text>`+"\n", xAt(x), bottom+14, compact(x))
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s (log scale)</text>`+"\n", (left+right)/2, bottom+30, esc(col.name))
	var line []string
	for i, x := range col.xs {
		if i >= len(ys) || !(ys[i] > 0) {
			continue
		}
		px, py := xAt(x), yAt(ys[i])
		line = append(line, fmt.Sprintf("%.1f,%.1f", px, py))
		fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="#1f5fa8"/>`+"\n", px, py)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold" fill="#1f5fa8">%s</text>`+"\n", px, py-7, compact(ys[i]))
	}
	if len(line) > 1 {
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="#1f5fa8" stroke-width="2"/>`+"\n", strings.Join(line, " "))
	}
	b.WriteString("</g>\n")
}

// logScale maps xs logarithmically onto [from, to]; a single value, or
// values all alike, go to the middle.
func logScale(xs []float64, from, to float64) func(float64) float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		if x > 0 {
			lo, hi = min(lo, math.Log(x)), max(hi, math.Log(x))
		}
	}
	if !(hi > lo) {
		return func(float64) float64 { return (from + to) / 2 }
	}
	return func(x float64) float64 {
		if !(x > 0) {
			return from
		}
		return from + (math.Log(x)-lo)/(hi-lo)*(to-from)
	}
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		if x > m {
			m = x
		}
	}
	return m
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (1 for nothing).
func niceCeil(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// compact formats a figure for a label: 1.32M, 945k, 12.5k, 241, 9.2.
func compact(v float64) string {
	trim := func(s string) string {
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		return s
	}
	switch a := math.Abs(v); {
	case a >= 1e6:
		return trim(fmt.Sprintf("%.2f", v/1e6)) + "M"
	case a >= 1e5:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 1e3:
		return trim(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case a >= 100 || a == 0:
		return fmt.Sprintf("%.0f", v)
	default:
		return trim(fmt.Sprintf("%.1f", v))
	}
}

// esc escapes text for XML.
func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
