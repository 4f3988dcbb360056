// An HTTPS server and client on Go's own crypto/tls (net/http, standard
// library only), for the agent's Go TLS tests.
//
//	go_https server [-port P] -cert C -key K   serves /status/N (?sleep=ms)
//	go_https server [-port P] -plain           the same over plain HTTP;
//	                                           also answers /leaf/...
//	go_https gateway [-port P] [-cert C -key K] URL...
//	                                           GET /work/ID (over HTTPS with
//	                                           -cert) calls URL/leaf/ID/I
//	                                           for each URL
//	                                           (I its index), all at once,
//	                                           one goroutine each, through
//	                                           one keep-alive client
//	go_https client [-h2] URL...               GETs each URL in turn (one
//	                                           keep-alive connection per
//	                                           server), prints each status
//
// The server prints "listening on <port>" once it accepts connections.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
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
	case "gateway":
		gateway(os.Args[2:])
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
	plain := flags.Bool("plain", false, "plain HTTP, no TLS")
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
	mux.HandleFunc("/leaf/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "leaf")
	})
	listener := listen(*port)
	srv := &http.Server{Handler: mux}
	var err error
	if *plain {
		err = srv.Serve(listener)
	} else {
		err = srv.ServeTLS(listener, *cert, *key)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// listen listens on 127.0.0.1:port and says on which port.
func listen(port int) net.Listener {
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %d\n", listener.Addr().(*net.TCPAddr).Port)
	return listener
}

func gateway(args []string) {
	flags := flag.NewFlagSet("gateway", flag.ExitOnError)
	port := flags.Int("port", 0, "port on 127.0.0.1")
	cert := flags.String("cert", "", "serve HTTPS with this certificate (PEM)")
	key := flags.String("key", "", "and this private key (PEM)")
	flags.Parse(args)
	downstream := flags.Args()
	c := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 4},
		Timeout:   10 * time.Second,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/work/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/work/")
		failed := make([]error, len(downstream))
		var wg sync.WaitGroup
		for i, base := range downstream {
			wg.Add(1)
			go func(i int, url string) {
				defer wg.Done()
				resp, err := c.Get(url)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				failed[i] = err
			}(i, fmt.Sprintf("%s/leaf/%s/%d", base, id, i))
		}
		wg.Wait()
		for _, err := range failed {
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		fmt.Fprint(w, "done\n")
	})
	var err error
	if *cert != "" {
		err = http.ServeTLS(listen(*port), mux, *cert, *key)
	} else {
		err = http.Serve(listen(*port), mux)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func client(args []string) {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	h2 := flags.Bool("h2", false, "offer HTTP/2 (ALPN h2)")
	flags.Parse(args)
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: *h2,
	}
	c := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	for _, url := range flags.Args() {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Proto)
	}
}
