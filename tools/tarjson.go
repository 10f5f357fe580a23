// tarjson prints what Go's archive/tar reports for the tar on stdin, one
// JSON object per entry with the fields a ztoc keeps, then {"end": N}
// with the bytes the reader consumed (or {"error": ...}).
//
// soci-snapshotter builds its TOCs with this reader, so test_tar_compat.py
// compares soci.py's tar scanner with it.
package main

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"io"
	"os"
	"sort"
)

// counter counts the bytes the tar reader takes, as soci's builder does.
type counter struct {
	r   io.Reader
	pos int64
}

func (c *counter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.pos += int64(n)
	return n, err
}

func records(h *tar.Header) [][2]string {
	keys := make([]string, 0, len(h.PAXRecords))
	for k := range h.PAXRecords {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pairs := [][2]string{}
	for _, k := range keys {
		pairs = append(pairs, [2]string{k, h.PAXRecords[k]})
	}
	return pairs
}

func main() {
	c := &counter{r: bufio.NewReader(os.Stdin)}
	tr := tar.NewReader(c)
	out := json.NewEncoder(os.Stdout)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			out.Encode(map[string]string{"error": err.Error()})
			return
		}
		modTime, _ := h.ModTime.UTC().MarshalText()
		out.Encode(map[string]interface{}{
			"name": h.Name, "type": string([]byte{h.Typeflag}),
			"offset": c.pos, "size": h.Size, "linkname": h.Linkname,
			"mode": h.Mode, "uid": h.Uid, "gid": h.Gid,
			"uname": h.Uname, "gname": h.Gname,
			"mod_time": string(modTime), "devmajor": h.Devmajor,
			"devminor": h.Devminor, "xattrs": records(h),
		})
	}
	out.Encode(map[string]int64{"end": c.pos})
}
