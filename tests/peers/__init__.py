"""Real peer servers (OpenSSH sshd, …) that tests start on loopback and stop by PID."""
