# CyxWiz Central: one image for the API, the worker and migrations (pick with the command).
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# npm install, not npm ci: litesvm 1.5.0 lists native packages for platforms it never published.
RUN npm install --no-audit --no-fund
COPY tsconfig.json drizzle.config.ts ./
COPY proto ./proto
COPY drizzle ./drizzle
COPY src ./src
EXPOSE 50051 8080
CMD ["npm", "run", "start:api"]
