package redistest

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Command is one command a client sent through a Proxy.
type Command struct {
	// Args are the command's name and arguments, as sent.
	Args []string
	// At is when the proxy read the command's first line.
	At time.Time
}

// commandLog keeps the commands of every recorded connection.
type commandLog struct {
	mu       sync.Mutex
	commands []Command
}

// read records the RESP commands of one connection until it ends or sends
// something that is not RESP (an inline command), which ends the recording
// of that connection only.
func (l *commandLog) read(r io.ReadCloser) {
	defer r.Close()              // nolint: errcheck
	defer io.Copy(io.Discard, r) // nolint: errcheck
	br := bufio.NewReader(r)
	for {
		cmd, err := readCommand(br)
		if err != nil {
			return
		}
		l.mu.Lock()
		l.commands = append(l.commands, cmd)
		l.mu.Unlock()
	}
}

func (l *commandLog) all() []Command {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Command(nil), l.commands...)
}

// readCommand reads one RESP array of bulk strings, which is how clients
// send commands.
func readCommand(br *bufio.Reader) (Command, error) {
	header, err := br.ReadString('\n')
	if err != nil {
		return Command{}, err
	}
	at := time.Now()
	n, err := respLength(header, '*')
	if err != nil {
		return Command{}, err
	}
	cmd := Command{At: at, Args: make([]string, 0, n)}
	for range n {
		line, err := br.ReadString('\n')
		if err != nil {
			return Command{}, err
		}
		size, err := respLength(line, '$')
		if err != nil {
			return Command{}, err
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return Command{}, err
		}
		cmd.Args = append(cmd.Args, string(buf[:size]))
	}
	return cmd, nil
}

func respLength(line string, kind byte) (int, error) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) < 2 || line[0] != kind {
		return 0, fmt.Errorf("not a RESP %q header: %q", kind, line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad RESP length %q", line)
	}
	return n, nil
}
