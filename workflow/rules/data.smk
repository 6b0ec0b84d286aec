# Stage: data (see src/lnpeft and DESIGN).
