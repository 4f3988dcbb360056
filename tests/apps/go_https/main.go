// An HTTPS server and client on Go's own crypto/tls (net/http, standard
// library only), for the agent's Go TLS tests.
//
//	go_https server -port P -cert C -key K   serves /status/N (and ?sleep=ms)
//	go_https client -url U -n N [-h2]        GETs U N times on one keep-alive
//	                                         connection, prints each status
//
// The server prints "listening" once it accepts connections. A client
// started with -wait reads a line from stdin before its requests, so a
// test can select it with the agent first.
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go_https server|client ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func server(args []string) {
	flags := flag.NewFlagSet("server", flag.ExitOnError)
	port := flags.Int("port", 0, "port on 127.0.0.1")
	cert := flags.String("cert", "", "certificate (PEM)")
	key := flags.String("key", "", "private key (PEM)")
	flags.Parse(args)
	mux := http.NewServeMux()
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		io.Copy(io.Discard, r.Body)
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil {
			code = 400
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d via %s\n", code, r.Proto)
	})
	srv := &http.Server{Addr: fmt.Sprintf("127.0.0.1:%d", *port), Handler: mux}
	fmt.Println("listening")
	if err := srv.ListenAndServeTLS(*cert, *key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(args []string) {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	url := flags.String("url", "", "URL to GET")
	n := flags.Int("n", 1, "requests, one after the other")
	h2 := flags.Bool("h2", false, "offer HTTP/2 (ALPN h2)")
	wait := flags.Bool("wait", false, "read a line from stdin first")
	flags.Parse(args)
	if *wait {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: *h2,
	}
	c := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	for i := 0; i < *n; i++ {
		resp, err := c.Get(*url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Proto)
	}
}
